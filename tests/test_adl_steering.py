"""The offline coherence grader on the real model (slow): ordinary sampled answers pass, answers
steered far past the coherent range fail. The steering search's threshold (75% of a prompt's
samples coherent) only means something if unsteered answers pass well above it."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from evals.organisms import get_organism
from evals.organisms.build import load_organism_pair
from prompts import load_prompt_set
from tools.adl.coherence import OfflineCoherenceGrader
from tools.adl.pipeline import AdlSettings, run_adl, steering_direction
from tools.adl.steering import generate_steered

pytestmark = pytest.mark.slow

SAMPLES_PER_PROMPT = 8


@lru_cache(maxsize=1)
def _pair_and_artifact(name: str):
    pair = load_organism_pair(get_organism(name))
    return pair, run_adl(pair, AdlSettings(n_samples=1000), show_progress=False)


def _pass_rate(name: str, strength: float, temperature: float) -> float:
    pair, artifact = _pair_and_artifact(name)
    layer = artifact.readouts.primary_layer
    prompts = [p for p in load_prompt_set("steering_prompts.yaml") for _ in range(SAMPLES_PER_PROMPT)]
    rows = [(position, prompt) for position in (1, 2) for prompt in prompts]
    vectors = torch.stack([steering_direction(artifact.difference, layer, p) for p, _ in rows])
    samples = generate_steered(pair, [q for _, q in rows], vectors, [strength] * len(rows), layer,
                               max_new_tokens=40, temperature=temperature, seed=11)
    verdicts = OfflineCoherenceGrader(pair).grade([q for _, q in rows], samples)
    return sum(verdicts) / len(verdicts)


@pytest.mark.parametrize("name", ["cake_bake", "em_bad_medical_advice"])
def test_unsteered_answers_pass_and_heavily_steered_ones_fail(name: str) -> None:
    assert _pass_rate(name, 0.0, temperature=1.0) >= 0.9  # measured 0.96
    assert _pass_rate(name, 0.0, temperature=0.0) >= 0.95  # measured 1.0
    assert _pass_rate(name, 2.0, temperature=1.0) <= 0.15  # measured 0.06
