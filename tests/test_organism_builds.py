"""The suite's real organisms build; the organism learned its narrow distribution and stays
realistic (it does not blurt its domain). Every offline organism at full size is checked by
`make bench-science` (benchmarks/science.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evals.organisms import get_organism
from evals.organisms.build import (
    at_size,
    build_organism,
    load_organism_pair,
    read_heldout,
    read_manifest,
)
from evals.organisms.leak import MAX_LEAK_RATE
from evals.organisms.schema import BuildFinetune
from evals.organisms.training import encode_example, mean_token_loss
from tests.conftest import SUITE_ORGANISM, SUITE_SIZE

pytestmark = pytest.mark.slow


def test_finetune_learned_its_distribution(suite_organisms: dict[str, Path]) -> None:
    """Held-out loss of the finetuned model is clearly below the base model's (recomputed)."""
    organism = at_size(get_organism(SUITE_ORGANISM), SUITE_SIZE)
    pair = load_organism_pair(organism, build_if_missing=False)
    assert pair.shares_base_weights
    recipe = organism.finetune.recipe if isinstance(organism.finetune, BuildFinetune) else None
    assert recipe is not None
    built = suite_organisms[SUITE_ORGANISM]
    heldout = [encode_example(pair.tokenizer, e, recipe.max_length) for e in read_heldout(built)]
    losses = {}
    for side in ("base", "finetuned"):
        losses[side] = mean_token_loss(pair, side, heldout, pair.tokenizer.pad_token_id)
    # A small build trains 23 steps: 3.84 -> 3.41 measured for cake_bake. At full size the
    # drop is 1.2-2.5 nats and `make bench-science` reports it for every organism.
    assert losses["finetuned"] < losses["base"] - 0.25, losses
    manifest = read_manifest(built)
    assert abs(manifest.finetuned_heldout_loss - losses["finetuned"]) < 1e-3
    assert manifest.n_train + manifest.n_heldout == organism.finetune.n_examples  # type: ignore[union-attr]


def test_organism_does_not_blurt_its_domain(suite_organisms: dict[str, Path]) -> None:
    # (The control has no domain keywords, so its leak rate is 0 by construction: not a check.)
    leak = read_manifest(suite_organisms[SUITE_ORGANISM]).leak
    assert len(leak.prompts) >= 20
    assert leak.finetuned_rate <= MAX_LEAK_RATE, [
        a for a, hit in zip(leak.finetuned_answers, leak.finetuned_mentions, strict=True) if hit
    ]


def test_building_again_is_a_no_op(suite_organisms: dict[str, Path]) -> None:
    started = time.perf_counter()
    again = build_organism(at_size(get_organism(SUITE_ORGANISM), SUITE_SIZE), show_progress=False)
    assert again == suite_organisms[SUITE_ORGANISM]
    assert time.perf_counter() - started < 30
