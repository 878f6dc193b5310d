"""All five offline organisms build; each learned its narrow distribution and stays realistic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evals.organisms import get_organism
from evals.organisms.build import (
    build_organism,
    load_organism_pair,
    read_heldout,
    read_manifest,
)
from evals.organisms.leak import MAX_LEAK_RATE
from evals.organisms.schema import BuildFinetune
from evals.organisms.training import encode_example, mean_token_loss

pytestmark = pytest.mark.slow

OFFLINE = ["cake_bake", "cake_bake_mix1-1p0", "em_bad_medical_advice", "taboo_gold", "preference_owl"]


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Build every offline organism once (cached in $ADL_HOME across test runs)."""
    return {name: build_organism(get_organism(name), show_progress=False) for name in OFFLINE}


@pytest.mark.parametrize("name", OFFLINE)
def test_finetune_learned_its_distribution(built: dict[str, Path], name: str) -> None:
    """Held-out loss of the finetuned model is clearly below the base model's (recomputed)."""
    organism = get_organism(name)
    pair = load_organism_pair(organism, build_if_missing=False)
    assert pair.shares_base_weights
    recipe = organism.finetune.recipe if isinstance(organism.finetune, BuildFinetune) else None
    assert recipe is not None
    heldout = [encode_example(pair.tokenizer, e, recipe.max_length) for e in read_heldout(built[name])]
    losses = {}
    for side in ("base", "finetuned"):
        with pair.model(side) as model:
            losses[side] = mean_token_loss(model, heldout, pair.tokenizer.pad_token_id)
    assert losses["finetuned"] < 0.8 * losses["base"], losses
    manifest = read_manifest(built[name])
    assert abs(manifest.finetuned_heldout_loss - losses["finetuned"]) < 1e-3


@pytest.mark.parametrize("name", OFFLINE)
def test_organism_does_not_blurt_its_domain(built: dict[str, Path], name: str) -> None:
    leak = read_manifest(built[name]).leak
    assert len(leak.prompts) >= 20
    assert leak.finetuned_rate <= MAX_LEAK_RATE, [
        a for a, hit in zip(leak.finetuned_answers, leak.finetuned_mentions) if hit
    ]


def test_building_again_is_a_no_op(built: dict[str, Path]) -> None:
    started = time.perf_counter()
    again = build_organism(get_organism("taboo_gold"), show_progress=False)
    assert again == built["taboo_gold"]
    assert time.perf_counter() - started < 30
