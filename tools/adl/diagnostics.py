"""Diagnostics of an ADL result against an organism's ground truth.

Token relevance (offline): the share of the top-20 readout tokens whose all-MiniLM-L6-v2
embedding is close (cosine >= threshold) to a sentence of the organism's ground truth (its
descriptions and key facts). Tokens without letters count as irrelevant. The same scoring on
control pairs (a model diffed with itself; a finetune on generic text) is the baseline that
a relevance figure has to beat.

Steering similarity: mean cosine between steered samples and the centroid of the finetuning
data, against the same for unsteered samples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel

from tools.adl.embeddings import embed
from tools.adl.readouts import TokenScore

RELEVANCE_THRESHOLD = 0.3  # calibrated: domain words 0.3-0.65, hub tokens and fragments <= 0.26


def ground_truth_sentences(description: str, description_long: str, key_facts: Sequence[str]) -> list[str]:
    """The sentences a relevant token should be close to."""
    long_sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", description_long) if s.strip()]
    return [description, *long_sentences, *key_facts]


def token_relevance(
    tokens: Sequence[TokenScore | str],
    truth: Sequence[str],
    k: int = 20,
    threshold: float = RELEVANCE_THRESHOLD,
) -> float:
    """Share of the top-k tokens relevant to the ground truth."""
    words = [(t.token if isinstance(t, TokenScore) else t).strip() for t in tokens[:k]]
    if not words:
        return 0.0
    candidates = [w for w in words if sum(c.isalpha() for c in w) >= 3]
    if not candidates:
        return 0.0
    sims = embed(candidates) @ embed(list(truth)).T
    relevant = int((sims.max(dim=1).values >= threshold).sum())
    return relevant / len(words)


class SteeringSimilarity(BaseModel):
    steered: float
    unsteered: float

    @property
    def gain(self) -> float:
        return self.steered - self.unsteered


def steering_similarity(
    steered: Sequence[str], unsteered: Sequence[str], finetuning_texts: Sequence[str]
) -> SteeringSimilarity:
    """Mean cosine of samples to the finetuning-data centroid, steered vs unsteered."""
    centroid = embed(list(finetuning_texts)).mean(0)
    centroid = centroid / centroid.norm().clamp_min(1e-12)

    def score(texts: Sequence[str]) -> float:
        texts = [t for t in texts if t.strip()] or [""]
        return float((embed(texts) @ centroid).mean())

    return SteeringSimilarity(steered=score(steered), unsteered=score(unsteered))



