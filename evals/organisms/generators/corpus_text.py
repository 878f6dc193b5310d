"""Control organism data: plain pretraining-corpus documents (no narrow domain)."""

from __future__ import annotations

import random

from evals.organisms.generators.base import TrainingExample
from tools.corpus import leading_text, load_corpus


def generate_corpus_text(rng: random.Random, n: int) -> list[TrainingExample]:
    """The leading sentences (up to 400 characters, as long as the domain organisms' examples)
    of `n` documents of the corpus mixing split (never the documents ADL reads)."""
    documents = load_corpus().split("mixing")
    return [TrainingExample(text=leading_text(doc)) for doc in rng.sample(documents, n)]
