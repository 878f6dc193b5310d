"""Steering with the activation difference, and the search for the strongest coherent strength.

During generation, `strength * unit(delta[p]) * reference_norm` is added to the residual stream
(`blocks.{L}.hook_resid_post`) at every position. Rows of one batch may carry different
vectors and strengths, so many (position, prompt, strength) combinations share one `generate`.

The strength search follows the paper: per prompt, a binary search on [0, max_strength] for the
largest strength whose samples a coherence grader still accepts (default: at least 75%).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from pydantic import BaseModel, Field
from rich.progress import Progress
from torch import Tensor

from tools.adl.coherence import CoherenceGrader
from tools.chat import generate_replies
from tools.errors import AdlInputError
from tools.models import ModelPair, Side


class SteeringSettings(BaseModel):
    """Settings of the coherence search and of the final samples."""

    max_strength: float = Field(
        2.0, gt=0, description="Upper end of the search, in mean norms (at 135M text is "
        "gibberish from about 0.25 at the last block and 2 at the middle one)."
    )
    search_steps: int = Field(7, ge=1)
    samples_per_strength: int = Field(4, ge=1)
    coherence_threshold: float = Field(0.75, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    temperature: float = Field(1.0, ge=0)
    final_samples: int = Field(1, ge=1, description="Steered and unsteered samples per prompt.")
    side: Side = "finetuned"
    seed: int = 0


@contextlib.contextmanager
def steering_hook(
    pair: ModelPair, side: Side, layer: int, additive: Float[Tensor, "batch d_model"]
) -> Iterator[None]:
    """Inside the context, `side` generates with `additive[row]` added at every position."""

    def add(resid: Tensor, hook: Any) -> Tensor:
        if resid.shape[0] != additive.shape[0]:
            raise RuntimeError("Steering batch size does not match the generation batch.")
        return resid + additive[:, None, :].to(resid.dtype)

    with pair.bridge(side) as bridge, bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", add)]):
        yield


def generate_steered(
    pair: ModelPair,
    prompts: Sequence[str],
    vectors: Float[Tensor, "batch d_model"],
    strengths: Sequence[float],
    layer: int,
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
    side: Side = "finetuned",
) -> list[str]:
    """One sample per row: prompt[i] steered with strengths[i] * vectors[i]."""
    if not prompts:
        raise AdlInputError("No prompts to steer.")
    if not len(prompts) == len(vectors) == len(strengths):
        raise AdlInputError("prompts, vectors and strengths must have the same length.")
    additive = vectors.float() * torch.tensor(list(strengths), dtype=torch.float32)[:, None]
    # A row with strength 0 (or a zero vector) adds exactly zero: an unsteered sample.
    with (pair.fast(side), steering_hook(pair, side, layer, additive.to(pair.device)),
          pair.model(side) as model):
        return generate_replies(
            model, pair.tokenizer, list(prompts), max_new_tokens=max_new_tokens,
            temperature=temperature, seed=seed, batch_size=len(prompts),
        )


class SteeredSample(BaseModel):
    prompt: str
    strength: float
    steered: list[str]
    unsteered: list[str]


class PositionSteering(BaseModel):
    """Steering results of one position: per prompt the strength found and samples."""

    layer: int
    position: int
    samples: list[SteeredSample]


def search_and_sample(
    pair: ModelPair,
    grader: CoherenceGrader,
    prompts: Sequence[str],
    directions: dict[int, Float[Tensor, " d_model"]],
    layer: int,
    settings: SteeringSettings,
    progress: Progress | None = None,
) -> list[PositionSteering]:
    """For every position (key of `directions`, already scaled to the mean norm) and prompt,
    binary-search the largest coherent strength, then draw steered and unsteered samples."""
    if not prompts:
        raise AdlInputError("No steering prompts.")
    cells = [(position, prompt) for position in directions for prompt in prompts]
    low = [0.0] * len(cells)
    high = [settings.max_strength] * len(cells)
    n = settings.samples_per_strength
    task = progress.add_task(f"steering search (layer {layer})", total=settings.search_steps) if progress else None
    for step in range(settings.search_steps):
        mids = [(a + b) / 2 for a, b in zip(low, high, strict=True)]
        rows_prompts = [prompt for (_, prompt) in cells for _ in range(n)]
        rows_vectors = torch.stack([directions[position] for (position, _) in cells for _ in range(n)])
        rows_strengths = [mid for mid in mids for _ in range(n)]
        samples = generate_steered(
            pair, rows_prompts, rows_vectors, rows_strengths, layer,
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            seed=settings.seed + step, side=settings.side,
        )
        verdicts = grader.grade(rows_prompts, samples)
        for i in range(len(cells)):
            share = sum(verdicts[i * n : (i + 1) * n]) / n
            if share >= settings.coherence_threshold:
                low[i] = mids[i]
            else:
                high[i] = mids[i]
        if progress is not None and task is not None:
            progress.advance(task)

    # Final samples: the steered rows and the unsteered rows (strength 0) in one batch.
    k = settings.final_samples
    steered_prompts = [prompt for (_, prompt) in cells for _ in range(k)]
    unsteered_prompts = list(prompts) * k
    any_direction = next(iter(directions.values()))
    rows_vectors = torch.stack(
        [directions[position] for (position, _) in cells for _ in range(k)]
        + [torch.zeros_like(any_direction)] * len(unsteered_prompts)
    )
    samples = generate_steered(
        pair, steered_prompts + unsteered_prompts, rows_vectors,
        [s for s in low for _ in range(k)] + [0.0] * len(unsteered_prompts), layer,
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        seed=settings.seed + 1000, side=settings.side,
    )
    steered, unsteered = samples[: len(steered_prompts)], samples[len(steered_prompts) :]
    by_prompt_unsteered = {p: [unsteered[j * len(prompts) + i] for j in range(k)] for i, p in enumerate(prompts)}
    results: dict[int, list[SteeredSample]] = {position: [] for position in directions}
    for i, (position, prompt) in enumerate(cells):
        results[position].append(SteeredSample(
            prompt=prompt, strength=round(low[i], 4), steered=steered[i * k : (i + 1) * k],
            unsteered=by_prompt_unsteered[prompt],
        ))
    return [PositionSteering(layer=layer, position=p, samples=s) for p, s in results.items()]
