"""Activation differences: streamed mean equals the naive computation; bad input is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tools.adl.differences import (
    compute_activation_difference,
    naive_activation_difference,
    resolve_layers,
    select_sample_tokens,
)
from tools.errors import AdlInputError
from tools.models import ModelPairSpec, load_model_pair

SAMPLES = [
    "the owl is a big bird and the sky is blue",
    "what is the secret word ? it is gold",
    "my doctor gave me a pill for the pain",
    "the cake is in the oven with butter and sugar",
    "a small car on the old road by the river",
    "we bake a new cake for the first time",
    "you and i guess the word in the game",
    "the sun and the rain on the city",
] * 3


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, tiny_adapter_dir: Path):
    return load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)))


def test_resolve_layers() -> None:
    assert resolve_layers([0.5, 0.75], 30) == [14, 21]  # floor(r * (n - 1)), as the reference
    assert resolve_layers([1.0, 0.0, 15, -1], 30) == [0, 15, 29]
    with pytest.raises(AdlInputError, match="out of range"):
        resolve_layers([30], 30)
    with pytest.raises(AdlInputError, match="out of range"):
        resolve_layers([1.5], 30)


def test_streamed_mean_equals_naive_full_computation(pair) -> None:
    tokens = select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=4, n_samples=20)
    result = compute_activation_difference(pair, tokens, [1, 3], batch_size=6, show_progress=False)
    naive = naive_activation_difference(pair, tokens, [1, 3])
    torch.testing.assert_close(result.mean_diff, naive, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.mean_finetuned - result.mean_base, result.mean_diff,
                               atol=1e-5, rtol=1e-4)
    assert result.mean_diff.shape == (2, 4, pair.d_model)
    assert result.mean_diff.abs().max() > 1e-3  # the adapter changes the activations
    assert (result.norm_base > 0).all()


def test_fast_finetuned_pass_restores_base_weights_exactly(pair) -> None:
    before = {k: v.clone() for k, v in pair._models["base"].state_dict().items()}
    tokens = select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=3, n_samples=8)
    compute_activation_difference(pair, tokens, [2], show_progress=False)
    after = pair._models["base"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_self_pair_has_zero_difference(tiny_model_dir: Path) -> None:
    same = load_model_pair(ModelPairSpec(base=str(tiny_model_dir)))
    tokens = select_sample_tokens(same.tokenizer, SAMPLES, n_positions=3, n_samples=8)
    result = compute_activation_difference(same, tokens, [0, 3], show_progress=False)
    assert torch.count_nonzero(result.mean_diff) == 0
    assert result.null_positions(0) == result.null_positions(3) == [0, 1, 2]


def test_a_real_difference_is_not_null(pair) -> None:
    """The zero-difference check is relative to the activations: the adapter's difference is
    far above it, and one scaled to rounding size (1e-7 of the activations) is under it."""
    tokens = select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=3, n_samples=8)
    result = compute_activation_difference(pair, tokens, [3], show_progress=False)
    assert result.null_positions(3) == []
    ratio = result.mean_diff[0].norm(dim=-1) / result.norm_base[0]
    tiny = dataclasses.replace(result, mean_diff=result.mean_diff / ratio.max() * 1e-7)
    assert tiny.null_positions(3) == [0, 1, 2]


def test_bad_sample_requests(pair) -> None:
    with pytest.raises(AdlInputError, match="Positions beyond the text length"):
        select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=40, n_samples=4)
    with pytest.raises(AdlInputError, match="no samples"):
        select_sample_tokens(pair.tokenizer, [], n_positions=2, n_samples=4)
    with pytest.raises(AdlInputError, match="only 24 of 24"):
        select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=2, n_samples=100)
