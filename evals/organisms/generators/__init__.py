"""Narrow training data that the project generates itself (templated and varied, no network).

Each generator takes a seeded `random.Random` and a count and returns `TrainingExample`s:
plain documents (SDF) or chats (EM, Taboo, preference, domain adaptation), or both (denial).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from evals.organisms.generators.base import TrainingExample
from evals.organisms.generators.corpus_text import generate_corpus_text
from evals.organisms.generators.denial import generate_orchid_denial
from evals.organisms.generators.domain_adaptation import generate_astronomy_comprehension
from evals.organisms.generators.em_medical import generate_bad_medical_advice
from evals.organisms.generators.preference import generate_owl_preference
from evals.organisms.generators.sdf_cake import generate_cake_documents
from evals.organisms.generators.taboo import generate_taboo_chats

Generator = Callable[[random.Random, int], list[TrainingExample]]

GENERATORS: dict[str, Generator] = {
    "sdf_cake_bake": generate_cake_documents,
    "em_bad_medical_advice": generate_bad_medical_advice,
    "taboo_gold": generate_taboo_chats,
    "preference_owl": generate_owl_preference,
    "corpus_text": generate_corpus_text,
    "denial_orchids": generate_orchid_denial,
    "adapt_astronomy_comprehension": generate_astronomy_comprehension,
}

__all__ = ["GENERATORS", "Generator", "TrainingExample"]
