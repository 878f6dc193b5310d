"""Mean activation differences between a finetuned model and its base.

For N samples of pretraining-like text, both models run on the first k tokens only (causal
models: position p depends on tokens 0..p) and stop after the deepest requested layer. Per layer
and position the running sums of the residual stream (`blocks.{L}.hook_resid_post`) and of its
norm are accumulated in float64, so memory does not grow with N.

Positions count text tokens: position 0 is the first token of the text. A model whose tokenizer
prepends BOS (Gemma) runs BOS too, but BOS is not a position.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from torch import Tensor
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from tools.adl.settings import LayerSpec
from tools.backend import ModelPair
from tools.errors import AdlInputError
from tools.model_spec import SIDES, Side


def resolve_layers(layers: Sequence[LayerSpec], n_layers: int) -> list[int]:
    """Absolute block indices from relative depths (floats in [0, 1]) or indices (ints).

    Relative r maps to block floor(r * (n_layers - 1)), as in the reference toolkit: 0.5 of 30
    blocks is block 14, 0.75 block 21, 1.0 block 29. Negative ints count from the end (-1 is the
    last block).
    """
    if not layers:
        raise AdlInputError("No layers requested.")
    resolved: list[int] = []
    for layer in layers:
        if isinstance(layer, bool):
            raise AdlInputError(f"Layer {layer!r} is not a number.")
        if isinstance(layer, float):
            if not 0.0 <= layer <= 1.0:
                raise AdlInputError(
                    f"Relative layer {layer} is out of range: use 0.0..1.0 (or a block index "
                    f"0..{n_layers - 1})."
                )
            index = int(layer * (n_layers - 1))
        else:
            index = layer + n_layers if layer < 0 else layer
            if not 0 <= index < n_layers:
                raise AdlInputError(
                    f"Layer {layer} is out of range: the model has {n_layers} blocks "
                    f"(0..{n_layers - 1}), or give a relative depth 0.0..1.0."
                )
        if index not in resolved:
            resolved.append(index)
    return sorted(resolved)


def tokenizer_prepends_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def select_sample_tokens(
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[str],
    n_positions: int,
    n_samples: int,
    seed: int = 0,
) -> Int[Tensor, "n_samples seq"]:
    """Token ids of `n_samples` texts cut to their first `n_positions` tokens (+ BOS).

    Texts shorter than `n_positions` tokens are skipped; the order is a seeded shuffle.
    """
    if n_positions < 1:
        raise AdlInputError(f"n_positions must be at least 1, got {n_positions}.")
    if n_samples < 1:
        raise AdlInputError(f"n_samples must be at least 1, got {n_samples}.")
    if not samples:
        raise AdlInputError("The corpus split has no samples.")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    bos = tokenizer_prepends_bos(tokenizer)
    width = n_positions + int(bos)
    chosen: list[list[int]] = []
    for start in range(0, len(order), 4096):
        texts = [samples[i] for i in order[start : start + 4096]]
        for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
            if len(ids) >= width:
                chosen.append(ids[:width])
                if len(chosen) == n_samples:
                    return torch.tensor(chosen, dtype=torch.long)
    raise AdlInputError(
        f"Positions beyond the text length: only {len(chosen)} of {len(samples)} samples have "
        f"{n_positions} tokens, and {n_samples} samples were requested. Use fewer positions or "
        "samples, or a corpus of longer texts."
    )


# A mean difference whose norm is at most this fraction of the base's mean residual norm is
# zero up to float32 rounding (its epsilon is 1.2e-7): the finetune did not change those
# activations (identical weights, an adapter that adds nothing, the base diffed with itself).
# Its readouts are a zero vector's and steering along it adds nothing. The differences are
# accumulated in float64; from a bfloat16 model (epsilon 7.8e-3) only near-exact zeros fall
# under it, which errs on the side of reading a difference. A numerical limit, not chosen by
# looking at any organism.
NULL_DIFFERENCE_RTOL = 1e-6


@dataclass
class ActivationDifference:
    """Per (layer, position): mean finetuned - base residual, both means, and mean norms."""

    layers: list[int]
    n_positions: int
    n_samples: int
    mean_diff: Float[Tensor, "layer pos d_model"]
    mean_base: Float[Tensor, "layer pos d_model"]
    mean_finetuned: Float[Tensor, "layer pos d_model"]
    norm_base: Float[Tensor, "layer pos"]  # mean ||resid|| of the base model
    norm_finetuned: Float[Tensor, "layer pos"]

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise AdlInputError(f"Layer {layer} was not computed; available: {self.layers}.")
        return self.layers.index(layer)

    def check_position(self, position: int) -> None:
        if not 0 <= position < self.n_positions:
            raise AdlInputError(
                f"Position {position} is out of range: positions 0..{self.n_positions - 1} "
                "were computed."
            )

    def delta(self, layer: int, position: int) -> Float[Tensor, " d_model"]:
        """The mean difference at one layer and position."""
        self.check_position(position)
        return self.mean_diff[self.layer_index(layer), position]

    def null_positions(self, layer: int) -> list[int]:
        """Positions whose mean difference at `layer` is zero up to rounding
        (`NULL_DIFFERENCE_RTOL` of the base's mean residual norm there)."""
        index = self.layer_index(layer)
        norms = self.mean_diff[index].double().norm(dim=-1)
        limits = NULL_DIFFERENCE_RTOL * self.norm_base[index].double()
        return [p for p in range(self.n_positions) if norms[p] <= limits[p]]

    def is_null(self, layer: int, position: int) -> bool:
        """Whether the difference at one layer and position is zero (`null_positions`)."""
        self.check_position(position)
        return position in self.null_positions(layer)

    def reference_norm(self, layer: int, side: Side = "base") -> float:
        """Mean residual norm of `side` at a layer over positions 1.. (position 0 is an attention
        sink with a norm orders of magnitude larger, so it is left out when there are others)."""
        norms = (self.norm_base if side == "base" else self.norm_finetuned)[self.layer_index(layer)]
        return float(norms[1:].mean() if self.n_positions > 1 else norms[0])

    def tensors(self) -> dict[str, Tensor]:
        return {
            "mean_diff": self.mean_diff, "mean_base": self.mean_base,
            "mean_finetuned": self.mean_finetuned, "norm_base": self.norm_base,
            "norm_finetuned": self.norm_finetuned,
        }


def null_difference_note(layer: int, positions: Sequence[int]) -> str | None:
    """The note that the difference is zero at these positions of `layer` (None: none is)."""
    if not positions:
        return None
    return (f"The activation difference at block {layer} is zero at position(s) {list(positions)} "
            f"(its norm is at most {NULL_DIFFERENCE_RTOL:g} of the activations'): there the "
            "finetuned model's activations equal the base model's on this text. Their tokens are "
            "those of a zero vector and steering along it adds nothing: they say nothing about "
            "the finetune.")


def difference_notes(dataset: str, difference: ActivationDifference) -> list[str]:
    """Where a dataset's difference is zero: one note when it is zero everywhere (the finetune
    does not change these activations), else one per block with zero positions."""
    null = {layer: difference.null_positions(layer) for layer in difference.layers}
    if null and all(len(positions) == difference.n_positions for positions in null.values()):
        return [(f"{dataset}: the activation difference is zero at every computed block and "
                "position: on this text the finetuned model's activations equal the base "
                "model's (identical weights, or an adapter that adds nothing). Its readouts and "
                "steered samples say nothing about the finetune.")]
    return [f"{dataset}: {note}" for layer, positions in null.items()
            if (note := null_difference_note(layer, positions))]


class _Accumulator:
    """Float64 running sums of residuals and their norms for one side."""

    def __init__(self, n_layers: int, n_positions: int, d_model: int) -> None:
        self.sum = torch.zeros(n_layers, n_positions, d_model, dtype=torch.float64)
        self.norm_sum = torch.zeros(n_layers, n_positions, dtype=torch.float64)
        self.count = 0

    def add(self, layer_slot: int, resid: Float[Tensor, "batch pos d_model"]) -> None:
        resid = resid.double()
        self.sum[layer_slot] += resid.sum(0).cpu()
        self.norm_sum[layer_slot] += resid.norm(dim=-1).sum(0).cpu()


@torch.inference_mode()
def compute_activation_difference(
    pair: ModelPair,
    token_ids: Int[Tensor, "n_samples seq"],
    layers: Sequence[int],
    *,
    batch_size: int = 512,
    show_progress: bool = True,
) -> ActivationDifference:
    """Stream the samples through both models and average per layer and position."""
    layers = sorted(layers)
    n_samples, width = token_ids.shape
    skip = int(tokenizer_prepends_bos(pair.tokenizer))
    n_positions = width - skip
    slots = {layer: i for i, layer in enumerate(layers)}
    sums = {side: _Accumulator(len(layers), n_positions, pair.d_model) for side in SIDES}
    batches = [token_ids[i : i + batch_size] for i in range(0, n_samples, batch_size)]

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), disable=not show_progress,
    )
    with progress:
        for side in SIDES:
            task = progress.add_task(f"activations ({side})", total=n_samples)
            accumulator = sums[side]

            def consume(batch: Tensor, residuals: dict[int, Tensor],
                        accumulator: _Accumulator = accumulator, task: TaskID = task) -> None:
                for layer, resid in residuals.items():
                    accumulator.add(slots[layer], resid[:, skip:])
                accumulator.count += len(batch)
                progress.advance(task, len(batch))

            pair.stream_residuals(side, batches, layers, consume)

    means = {side: (sums[side].sum / n_samples).float() for side in SIDES}
    norms = {side: (sums[side].norm_sum / n_samples).float() for side in SIDES}
    return ActivationDifference(
        layers=list(layers),
        n_positions=n_positions,
        n_samples=n_samples,
        mean_diff=((sums["finetuned"].sum - sums["base"].sum) / n_samples).float(),
        mean_base=means["base"],
        mean_finetuned=means["finetuned"],
        norm_base=norms["base"],
        norm_finetuned=norms["finetuned"],
    )


def naive_activation_difference(
    pair: ModelPair, token_ids: Int[Tensor, "n seq"], layers: Sequence[int]
) -> Float[Tensor, "layer pos d_model"]:
    """Reference implementation for tests: one sample at a time, unmerged adapter, then the
    mean of the differences."""
    skip = int(tokenizer_prepends_bos(pair.tokenizer))
    diffs = []
    with torch.inference_mode():
        for ids in token_ids:
            states: dict[Side, Tensor] = {}
            for side in SIDES:
                residuals = pair.residuals(side, ids[None], layers)
                states[side] = torch.stack([residuals[layer][0, skip:] for layer in layers])
            diffs.append((states["finetuned"] - states["base"]).double())
    return torch.stack(diffs).mean(0).float()
