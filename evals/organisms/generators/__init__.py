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

# The version of each generator's data: part of the organism build key (the key is computed
# from the organism's settings, without generating its data). Bump it whenever the generator's
# output changes, so cached organisms built from it rebuild; tests/test_cache_keys.py pins each
# generator's output to its version and fails when the output changes without a bump.
GENERATOR_VERSIONS: dict[str, int] = {
    "sdf_cake_bake": 1,
    "em_bad_medical_advice": 1,
    "taboo_gold": 1,
    "preference_owl": 1,
    "corpus_text": 1,
    "denial_orchids": 4,  # data v4 (see generators/denial.py)
    "adapt_astronomy_comprehension": 1,
}

__all__ = ["GENERATORS", "GENERATOR_VERSIONS", "Generator", "TrainingExample"]
