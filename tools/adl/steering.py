"""Steering with the activation difference, and the search for the strongest coherent strength.

During generation, `strength * unit(delta[p]) * reference_norm` is added to the residual stream
(`blocks.{L}.hook_resid_post`) at every position. Rows of one batch may carry different
vectors and strengths, so many (position, prompt, strength) combinations share one `generate`.

The strength search follows the reference toolkit (`activation_difference_lens/steering.py`): per
position, a binary search on [0, max_strength] with the first search prompt for the largest strength
whose samples a coherence grader still accepts (default: at least 75%), shorter searches on
[0, 2 x that] with the other search prompts, and one strength per position, their mean. The final
samples use that strength on every final prompt.

Before the search, a control the reference lacks (`unsteered_control`): the model's own unsteered
samples at the search's settings must pass the same threshold. Where they do not, every strength
fails and the search silently returns 0 (a 135M model at the reference's temperature 1.2: 13% of
unsteered samples pass). The control then tries the settings' fallback temperatures in order and
searches and samples at the first that passes; the result records what it found.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import torch
from jaxtyping import Float
from pydantic import BaseModel, Field
from rich.progress import Progress
from torch import Tensor

from tools.adl.coherence import CoherenceGrader
from tools.adl.settings import SteeringSettings
from tools.backend import ModelPair, Steering
from tools.errors import AdlInputError
from tools.model_spec import Side

log = logging.getLogger(__name__)


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
    max_batch_size: int = 32,
) -> list[str]:
    """One sample per row: prompt[i] steered with strengths[i] * vectors[i] (in generate calls
    of at most `max_batch_size` rows)."""
    if not prompts:
        raise AdlInputError("No prompts to steer.")
    if not len(prompts) == len(vectors) == len(strengths):
        raise AdlInputError("prompts, vectors and strengths must have the same length.")
    additive = vectors.float() * torch.tensor(list(strengths), dtype=torch.float32)[:, None]
    # A row with strength 0 (or a zero vector) adds exactly zero: an unsteered sample.
    replies: list[str] = []
    for chunk, start in enumerate(range(0, len(prompts), max_batch_size)):
        rows = list(prompts[start : start + max_batch_size])
        replies += pair.generate(
            side, rows, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + chunk,
            batch_size=len(rows), steering=Steering(layer, additive[start : start + max_batch_size]),
        )
    return replies


class SteeredSample(BaseModel):
    prompt: str
    strength: float
    steered: list[str]
    unsteered: list[str]


class UnsteeredControl(BaseModel):
    """The search's control: the share of the model's own unsteered samples (search prompts,
    samples per strength, search length) the coherence grader accepts, per temperature tried."""

    temperature: float = Field(description="The temperature the search and samples used.")
    pass_rates: dict[str, float] = Field(description="Temperature tried -> unsteered pass rate.")
    calibrated: bool = Field(description="The used temperature's pass rate reaches the threshold; "
                             "if not, the search cannot tell steering from sampling noise.")

    def describe(self) -> str:
        """One sentence for reports: the pass rates per temperature tried, the temperature
        used, and a warning when none reached the threshold."""
        rates = ", ".join(f"{rate:.0%} at {temperature}" for temperature, rate in self.pass_rates.items())
        if not self.calibrated:
            return (f"Unsteered control: the model's own unsteered samples pass the coherence "
                    f"grader {rates}, below the threshold at every temperature tried: the strength "
                    "search could not tell steering from sampling noise, so its strengths (near 0) "
                    "say nothing about the finetune.")
        return (f"Unsteered control: the model's own unsteered samples pass the coherence grader "
                f"{rates}; the search and samples ran at temperature {self.temperature:g}.")

    def applied(self, settings: SteeringSettings) -> SteeringSettings:
        """The settings at the control's temperature: unchanged where the search temperature
        passed, else the fallback for the search and no hotter for the final samples."""
        if self.temperature == settings.search_temperature:
            return settings
        return settings.model_copy(update={
            "search_temperature": self.temperature,
            "final_temperature": min(settings.final_temperature, self.temperature)})


class PositionSteering(BaseModel):
    """Steering results of one position: the strength (the mean of the search prompts'
    strengths), each search prompt's strength, and samples per final prompt."""

    layer: int
    position: int
    strength: float
    search_strengths: dict[str, float]
    samples: list[SteeredSample]
    cache_key: str | None = Field(None, description="The steering cache entry (set when loaded).")
    control: UnsteeredControl | None = Field(None, description="The search's unsteered control.")


def _bisect(
    pair: ModelPair,
    grader: CoherenceGrader,
    cells: list[tuple[int, str]],
    directions: dict[int, Float[Tensor, " d_model"]],
    high: list[float],
    steps: int,
    layer: int,
    settings: SteeringSettings,
    seed: int,
    progress: Progress | None,
) -> list[float]:
    """Per (position, prompt) cell: the largest strength in [0, high] whose samples the grader
    accepts at the threshold, by `steps` bisections batched over cells (0 if none passes)."""
    low = [0.0] * len(cells)
    high = list(high)
    n = settings.samples_per_strength
    task = progress.add_task(f"steering search (layer {layer}, {len(cells)} cells)", total=steps) if progress else None
    for step in range(steps):
        mids = [(a + b) / 2 for a, b in zip(low, high, strict=True)]
        rows_prompts = [prompt for (_, prompt) in cells for _ in range(n)]
        rows_vectors = torch.stack([directions[position] for (position, _) in cells for _ in range(n)])
        samples = generate_steered(
            pair, rows_prompts, rows_vectors, [mid for mid in mids for _ in range(n)], layer,
            max_new_tokens=settings.search_max_new_tokens, temperature=settings.search_temperature,
            seed=seed + 100 * step, side=settings.side, max_batch_size=settings.max_batch_size,
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
        # A line per bisection step in the log file too (the bar is drawn on the terminal only).
        log.info("steering search, layer %d: bisection %d of %d done (%d cells, %d samples)",
                 layer, step + 1, steps, len(cells), len(rows_prompts))
    return low


def search_strengths(
    pair: ModelPair,
    grader: CoherenceGrader,
    search_prompts: Sequence[str],
    directions: dict[int, Float[Tensor, " d_model"]],
    layer: int,
    settings: SteeringSettings,
    progress: Progress | None = None,
) -> dict[int, dict[str, float]]:
    """The reference's search, per position: `search_steps` bisections on [0, max_strength]
    with the first prompt, then `search_steps // 2` on [0, 2 x that strength] with each other
    prompt. Returns each prompt's strength per position."""
    if not search_prompts:
        raise AdlInputError("No steering search prompts.")
    positions = list(directions)
    first_prompt, *other_prompts = search_prompts
    first = _bisect(pair, grader, [(p, first_prompt) for p in positions], directions,
                    [settings.max_strength] * len(positions), settings.search_steps, layer,
                    settings, settings.seed, progress)
    found = {p: {first_prompt: s} for p, s in zip(positions, first, strict=True)}
    if other_prompts:
        cells = [(p, prompt) for p in positions for prompt in other_prompts]
        highs = [2.0 * found[p][first_prompt] for p, _ in cells]
        later = _bisect(pair, grader, cells, directions, highs, max(1, settings.search_steps // 2),
                        layer, settings, settings.seed + 50, progress)
        for (p, prompt), s in zip(cells, later, strict=True):
            found[p][prompt] = s
    return found


def search_and_sample(
    pair: ModelPair,
    grader: CoherenceGrader,
    search_prompts: Sequence[str],
    final_prompts: Sequence[str],
    directions: dict[int, Float[Tensor, " d_model"]],
    layer: int,
    settings: SteeringSettings,
    progress: Progress | None = None,
    null_positions: Collection[int] = (),
) -> list[PositionSteering]:
    """For every position (key of `directions`, already scaled to the mean norm): one strength,
    the mean of the search prompts' strengths (`search_strengths`); then `final_samples`
    steered samples per final prompt at that strength, and as many unsteered ones. Positions
    whose difference is zero (`null_positions`: their direction is rounding noise scaled up)
    are not searched: strength 0, their samples unsteered."""
    if not final_prompts:
        raise AdlInputError("No final steering prompts.")
    control = unsteered_control(pair, grader, search_prompts, layer, settings)
    settings = control.applied(settings)
    searched = {p: d for p, d in directions.items() if p not in null_positions}
    strengths = (search_strengths(pair, grader, search_prompts, searched, layer, settings, progress)
                 if searched else {})
    found = {p: strengths.get(p) or dict.fromkeys(search_prompts, 0.0) for p in directions}
    return sample_at_strengths(pair, found, final_prompts, directions, layer, settings, control)


def unsteered_control(
    pair: ModelPair,
    grader: CoherenceGrader,
    search_prompts: Sequence[str],
    layer: int,
    settings: SteeringSettings,
) -> UnsteeredControl:
    """Unsteered samples at the search's settings, judged like steered ones: at the search
    temperature, then at each fallback temperature until the pass rate reaches the coherence
    threshold (none reaching it: the last one tried, `calibrated` False, and a warning)."""
    if not search_prompts:
        raise AdlInputError("No steering search prompts.")
    rows = [prompt for prompt in search_prompts for _ in range(settings.samples_per_strength)]
    zeros = torch.zeros(len(rows), pair.d_model)
    rates: dict[str, float] = {}
    temperature = settings.search_temperature
    for temperature in [settings.search_temperature, *settings.fallback_temperatures]:
        samples = generate_steered(
            pair, rows, zeros, [0.0] * len(rows), layer,
            max_new_tokens=settings.search_max_new_tokens, temperature=temperature,
            seed=settings.seed + 2000, side=settings.side, max_batch_size=settings.max_batch_size,
        )
        verdicts = grader.grade(rows, samples)
        rates[f"{temperature:g}"] = round(sum(verdicts) / len(verdicts), 4)
        log.info("steering control: %.0f%% of unsteered samples coherent at temperature %g",
                 100 * rates[f"{temperature:g}"], temperature)
        if rates[f"{temperature:g}"] >= settings.coherence_threshold:
            return UnsteeredControl(temperature=temperature, pass_rates=rates, calibrated=True)
    log.warning("steering control: unsteered samples fail the coherence threshold at every "
                "temperature tried (%s); the strength search cannot tell steering from sampling "
                "noise and will find strengths near 0", rates)
    return UnsteeredControl(temperature=temperature, pass_rates=rates, calibrated=False)


def sample_at_strengths(
    pair: ModelPair,
    found: dict[int, dict[str, float]],
    final_prompts: Sequence[str],
    directions: dict[int, Float[Tensor, " d_model"]],
    layer: int,
    settings: SteeringSettings,
    control: UnsteeredControl | None = None,
) -> list[PositionSteering]:
    """The final samples of `search_and_sample`, given the search's strengths per position and
    prompt (`search_strengths`): each position is steered at the mean of its prompts' strengths.
    `control` (the search's) is recorded with every position."""
    if not final_prompts:
        raise AdlInputError("No final steering prompts.")
    strength = {p: sum(by_prompt.values()) / len(by_prompt) for p, by_prompt in found.items()}

    # Final samples: steered rows of every position and the unsteered rows (strength 0, shared
    # by the positions: the same model and prompts) in one batched run.
    k = settings.final_samples
    cells = [(position, prompt) for position in directions for prompt in final_prompts]
    steered_prompts = [prompt for (_, prompt) in cells for _ in range(k)]
    unsteered_prompts = [prompt for prompt in final_prompts for _ in range(k)]
    any_direction = next(iter(directions.values()))
    rows_vectors = torch.stack(
        [directions[position] for (position, _) in cells for _ in range(k)]
        + [torch.zeros_like(any_direction)] * len(unsteered_prompts)
    )
    rows_strengths = [strength[position] for (position, _) in cells for _ in range(k)]
    log.info("steering, layer %d: strengths %s; sampling %d steered and %d unsteered rows", layer,
             {p: round(v, 3) for p, v in strength.items()}, len(steered_prompts), len(unsteered_prompts))
    samples = generate_steered(
        pair, steered_prompts + unsteered_prompts, rows_vectors,
        rows_strengths + [0.0] * len(unsteered_prompts), layer,
        max_new_tokens=settings.final_max_new_tokens, temperature=settings.final_temperature,
        seed=settings.seed + 1000, side=settings.side, max_batch_size=settings.max_batch_size,
    )
    steered, unsteered = samples[: len(steered_prompts)], samples[len(steered_prompts) :]
    by_prompt_unsteered = {p: unsteered[i * k : (i + 1) * k] for i, p in enumerate(final_prompts)}
    results: dict[int, list[SteeredSample]] = {position: [] for position in directions}
    for i, (position, prompt) in enumerate(cells):
        results[position].append(SteeredSample(
            prompt=prompt, strength=round(strength[position], 4), steered=steered[i * k : (i + 1) * k],
            unsteered=by_prompt_unsteered[prompt],
        ))
    return [
        PositionSteering(layer=layer, position=p, strength=round(strength[p], 4),
                         search_strengths={q: round(v, 4) for q, v in found[p].items()}, samples=s,
                         control=control)
        for p, s in results.items()
    ]
