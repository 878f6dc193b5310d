"""Readouts of a direction in the residual stream: logit lens and Patchscope.

Logit lens: the final norm and the unembedding applied to a vector; its top tokens. Some tokens
top the readout of almost *any* direction ("hub" tokens); the suppressed view z-scores each
token's logit against the logits of random directions of the same norm, so a token ranks high
only when this direction favours it more than a random one would.

Patchscope (token identity): the direction, rescaled to the layer's mean residual norm and
multiplied by a scale, replaces the residual of an identity prompt at the `?` position; the
next-token distribution after `->` reads out what the direction "means" to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from pydantic import BaseModel
from torch import Tensor

from tools.errors import AdlInputError
from tools.models import ModelPair, Side

IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n? ->"
PATCHSCOPE_SCALES: tuple[float, ...] = (
    *(round(0.5 + 0.1 * i, 1) for i in range(16)), 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0,
)
ReadoutMethod = Literal["logit_lens", "logit_lens_suppressed", "patchscope"]


class TokenScore(BaseModel):
    """One token of a readout."""

    token: str
    token_id: int
    probability: float
    z_score: float | None = None


def unembed(pair: ModelPair, vectors: Float[Tensor, "n d_model"], side: Side = "finetuned") -> Float[Tensor, "n vocab"]:
    """Final norm + unembedding (logits) of residual-stream vectors."""
    with torch.inference_mode(), pair.model(side) as model:
        norm = model.model.norm if hasattr(model, "model") else model.get_decoder().norm
        head = model.get_output_embeddings()
        vectors = vectors.to(device=pair.device, dtype=head.weight.dtype)
        return head(norm(vectors)).float()


def _top_tokens(
    pair: ModelPair, logits: Float[Tensor, " vocab"], k: int, z: Tensor | None = None
) -> list[TokenScore]:
    probs = logits.softmax(-1)
    ranking = z if z is not None else logits
    top = torch.topk(ranking, k).indices
    return [
        TokenScore(
            token=pair.tokenizer.convert_tokens_to_string([pair.tokenizer.convert_ids_to_tokens(int(i))]),
            token_id=int(i),
            probability=float(probs[i]),
            z_score=float(z[i]) if z is not None else None,
        )
        for i in top
    ]


class RandomDirectionBaseline:
    """Per-token mean and std of logit-lens logits over random directions (hub suppression)."""

    def __init__(self, pair: ModelPair, n_directions: int = 256, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(n_directions, pair.d_model, generator=generator)
        self._pair = pair
        self._directions = directions / directions.norm(dim=-1, keepdim=True)
        self._stats: dict[float, tuple[Tensor, Tensor]] = {}

    def stats(self, norm: float) -> tuple[Float[Tensor, " vocab"], Float[Tensor, " vocab"]]:
        key = round(norm, 3)
        if key not in self._stats:
            logits = unembed(self._pair, self._directions * norm)
            self._stats[key] = (logits.mean(0), logits.std(0).clamp_min(1e-6))
        return self._stats[key]


def logit_lens(
    pair: ModelPair,
    vector: Float[Tensor, " d_model"],
    k: int = 20,
    baseline: RandomDirectionBaseline | None = None,
) -> list[TokenScore]:
    """Top-k tokens of the logit lens; z-scored against random directions when `baseline`."""
    if k < 1:
        raise AdlInputError(f"k must be at least 1, got {k}.")
    logits = unembed(pair, vector[None])[0]
    z = None
    if baseline is not None:
        mean, std = baseline.stats(float(vector.norm()))
        z = (logits - mean.to(logits.device)) / std.to(logits.device)
    return _top_tokens(pair, logits, k, z)


def _query_position(pair: ModelPair, ids: list[int]) -> int:
    """Index of the last token that contains '?' in the identity prompt."""
    for index in range(len(ids) - 1, -1, -1):
        if "?" in pair.tokenizer.decode([ids[index]]):
            return index
    raise AdlInputError("The identity prompt has no '?' token.")


@torch.inference_mode()
def patchscope(
    pair: ModelPair,
    vector: Float[Tensor, " d_model"],
    layer: int,
    reference_norm: float,
    scales: Sequence[float] = PATCHSCOPE_SCALES,
    k: int = 20,
    side: Side = "finetuned",
    prompt: str = IDENTITY_PROMPT,
) -> dict[float, list[TokenScore]]:
    """Next-token readout of the identity prompt with the `?` residual replaced by
    `scale * unit(vector) * reference_norm` at `layer`, for each scale (one batched pass)."""
    if not scales:
        raise AdlInputError("Patchscope needs at least one scale.")
    ids = pair.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    position = _query_position(pair, ids)
    unit = vector / vector.norm().clamp_min(1e-12)
    patches = torch.stack([unit * reference_norm * s for s in scales]).to(pair.device)
    batch = torch.tensor([ids] * len(scales), device=pair.device)

    def replace(resid: Tensor, hook: Any) -> Tensor:
        if resid.shape[1] > position:  # the prompt pass (not a cached single-token step)
            resid[:, position] = patches.to(resid.dtype)
        return resid

    with pair.bridge(side) as bridge:
        logits = bridge.run_with_hooks(
            batch, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", replace)], return_type="logits"
        )
    final = logits[:, -1].float()
    return {s: _top_tokens(pair, final[i], k) for i, s in enumerate(scales)}
