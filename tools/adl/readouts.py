"""Readouts of a direction in the residual stream: logit lens and Patchscope.

Logit lens: the final norm and the unembedding applied to a vector; its top tokens. Some tokens
top the readout of almost *any* direction ("hub" tokens); the suppressed view z-scores each
token's logit against the logits of random directions of the same norm, so a token ranks high
only when this direction favours it more than a random one would.

Patchscope (token identity), as in the reference toolkit (`activation_difference_lens/
auto_patch_scope.py`): the direction, rescaled to the layer's mean residual norm and multiplied
by a scale, replaces the residual of each of three identity prompts at their final `?`; a token
is kept when it is in the top `intersection_k` next tokens of every prompt, and scored by its
probability averaged over the prompts. Tokens that are punctuation only or contain an arrow are
dropped (the reference drops them before its judge sees the list; here before any reader does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tools.adl.settings import (
    IDENTITY_PROMPTS,
    PATCHSCOPE_INTERSECTION_K,
    PATCHSCOPE_SCALES,
    TokenScore,
)
from tools.backend import ModelPair
from tools.errors import AdlInputError
from tools.model_spec import Side


def _top_tokens(
    pair: ModelPair, logits: Float[Tensor, " vocab"], k: int, z: Tensor | None = None
) -> list[TokenScore]:
    probs = logits.softmax(-1)
    ranking = z if z is not None else logits
    top = torch.topk(ranking, min(k, ranking.shape[-1])).indices  # a vocabulary may be smaller than k
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
            logits = self._pair.unembed(self._directions * norm)
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
    logits = pair.unembed(vector[None])[0]
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


def _readable(token: str) -> bool:
    """False for tokens the reference removes before judging: punctuation only, or an arrow."""
    stripped = token.strip()
    return bool(stripped) and "->" not in stripped and "=>" not in stripped and any(c.isalnum() for c in stripped)


@dataclass(frozen=True)
class PatchscopeRequest:
    """One direction to read with Patchscope: patched at `layer`, rescaled to `reference_norm`."""

    vector: Float[Tensor, " d_model"]
    layer: int
    reference_norm: float


# Rows (requests x scales) per patched pass: bounds the probabilities kept per identity prompt
# (rows x vocabulary floats) for large vocabularies.
PATCHSCOPE_MAX_ROWS = 256


def patchscope(
    pair: ModelPair,
    vector: Float[Tensor, " d_model"],
    layer: int,
    reference_norm: float,
    scales: Sequence[float] = PATCHSCOPE_SCALES,
    k: int = 20,
    side: Side = "finetuned",
    prompts: Sequence[str] = IDENTITY_PROMPTS,
    intersection_k: int = PATCHSCOPE_INTERSECTION_K,
) -> dict[float, list[TokenScore]]:
    """Per scale, the top-k readable tokens of the identity prompts with the final `?` residual
    replaced by `scale * unit(vector) * reference_norm` at `layer`: tokens in every prompt's top
    `intersection_k`, ranked by their probability averaged over the prompts."""
    return patchscope_many(pair, [PatchscopeRequest(vector, layer, reference_norm)], scales, k,
                           side, prompts, intersection_k)[0]


@torch.inference_mode()
def patchscope_many(
    pair: ModelPair,
    requests: Sequence[PatchscopeRequest],
    scales: Sequence[float] = PATCHSCOPE_SCALES,
    k: int = 20,
    side: Side = "finetuned",
    prompts: Sequence[str] = IDENTITY_PROMPTS,
    intersection_k: int = PATCHSCOPE_INTERSECTION_K,
) -> list[dict[float, list[TokenScore]]]:
    """`patchscope` of many directions (any layers): the same readouts, with every direction and
    scale of a chunk patched in one pass per identity prompt."""
    if not scales:
        raise AdlInputError("Patchscope needs at least one scale.")
    if not prompts:
        raise AdlInputError("Patchscope needs at least one identity prompt.")
    encoded = []
    for prompt in prompts:
        ids = pair.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        encoded.append((ids, _query_position(pair, ids)))
    per_chunk = max(1, PATCHSCOPE_MAX_ROWS // len(scales))
    results: list[dict[float, list[TokenScore]]] = []
    for start in range(0, len(requests), per_chunk):
        chunk = requests[start : start + per_chunk]
        patches = torch.cat([
            torch.stack([r.vector / r.vector.norm().clamp_min(1e-12) * r.reference_norm * s for s in scales])
            for r in chunk
        ]).to(pair.device)
        layers = [r.layer for r in chunk for _ in scales]
        probabilities: list[Tensor] = []
        for ids, position in encoded:
            batch = torch.tensor([ids] * len(layers))
            probabilities.append(pair.patched_logits(side, batch, layers, position, patches).float().softmax(-1))
        stacked = torch.stack(probabilities)  # prompts x (requests x scales) x vocab
        top = min(intersection_k, stacked.shape[-1])
        in_top = torch.zeros_like(stacked, dtype=torch.bool).scatter_(-1, stacked.topk(top, dim=-1).indices, True)
        score = (stacked.mean(0) * in_top.all(0)).view(len(chunk), len(scales), -1)
        results += [_scale_readouts(pair, score[i], scales, k) for i in range(len(chunk))]
    return results


def _scale_readouts(pair: ModelPair, score: Float[Tensor, "scales vocab"], scales: Sequence[float],
                    k: int) -> dict[float, list[TokenScore]]:
    readouts: dict[float, list[TokenScore]] = {}
    for i, s in enumerate(scales):
        tokens: list[TokenScore] = []
        for token_id in torch.argsort(score[i], descending=True).tolist():
            if float(score[i, token_id]) <= 0.0 or len(tokens) == k:
                break
            text = pair.tokenizer.convert_tokens_to_string([pair.tokenizer.convert_ids_to_tokens(token_id)])
            if _readable(text):
                tokens.append(TokenScore(token=text, token_id=token_id, probability=float(score[i, token_id])))
        readouts[s] = tokens
    return readouts
