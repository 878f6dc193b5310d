"""Does an organism's ADL readout carry its domain, beyond controls?

For an organism: token relevance of its readouts to its own ground truth, against the same
score for two control pairs judged against the *same* ground truth: the base model diffed with
itself, and a finetune on generic corpus text (`control_generic_text`). Organism and controls
are read at the same layer, the configured primary layer (a fixed default for every pair, not
picked per organism). Steering similarity compares steered and unsteered samples with the
organism's finetuning data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from statistics import mean
from typing import Literal

import torch
from pydantic import BaseModel

from evals.organisms import Organism, get_organism
from evals.organisms.build import OrganismSize, at_size, load_organism_pair, organism_dir
from evals.organisms.training import read_jsonl
from prompts import load_prompt_set
from tools.adl.coherence import OfflineCoherenceGrader
from tools.adl.diagnostics import ground_truth_sentences, steering_similarity, token_relevance
from tools.adl.pipeline import (
    AdlArtifact,
    AdlSettings,
    LayerChoice,
    choose_primary_layer,
    run_adl,
    run_steering,
    steering_direction,
)
from tools.adl.profiles import QUICK
from tools.adl.steering import SteeringSettings, generate_steered
from tools.models import ModelPair, ModelPairSpec, load_model_pair

GENERIC_CONTROL = "control_generic_text"
# The signal test, benchmarks/science.py and the demo use the quick profile (tools/adl/profiles.py).
SIGNAL_ADL = QUICK.adl
SIGNAL_STEERING = QUICK.steering
SIGNAL_STEERING_POSITIONS: list[int] = list(QUICK.steering_positions or [])


class RelevanceScores(BaseModel):
    """Mean token relevance over positions 1.. at a layer (top 20 tokens)."""

    layer: int
    logit_lens: float
    logit_lens_suppressed: float
    patchscope: float


class SignalReport(BaseModel):
    organism: str
    primary_layer: int
    relevance: RelevanceScores
    relevance_by_layer: list[RelevanceScores]
    control_self: RelevanceScores | None = None  # None: the self-pair was not measured
    control_generic: RelevanceScores
    relative_delta_norm: float  # mean |delta| / mean residual norm, positions 1.., primary layer
    layer_choice: LayerChoice | None = None  # the contrast rule against the generic control
    steering_steered: float | None = None
    steering_unsteered: float | None = None
    steering_strengths: list[float] | None = None


SIGNAL_MARGIN = 0.1
# The controls: the base model diffed with itself, and the generic-text finetune.
ControlKind = Literal["self", "generic"]
CONTROL_KINDS: tuple[ControlKind, ...] = ("self", "generic")


def best_relevance(scores: RelevanceScores) -> float:
    """The better of the two logit-lens readouts (plain and hub-suppressed)."""
    return max(scores.logit_lens, scores.logit_lens_suppressed)


def domain_above_controls(report: SignalReport, margin: float = SIGNAL_MARGIN) -> bool:
    """The signal claim: the organism's readout is more relevant to its ground truth than both
    controls' readouts (those measured), by at least `margin` (share of the top-20 tokens)."""
    best = best_relevance(report.relevance)
    controls = [c for c in (report.control_generic, report.control_self) if c is not None]
    return all(best >= best_relevance(control) + margin for control in controls)


def relevance_at(artifact: AdlArtifact, truth: list[str], layer: int) -> RelevanceScores:
    entry = artifact.readouts.layer(layer)
    positions = entry.positions[1:] or entry.positions

    def score(kind: str) -> float:
        values = []
        for p in positions:
            if kind == "patchscope":
                tokens = p.patchscope[str(p.patchscope_scale)]
            else:
                tokens = getattr(p, kind)
            values.append(token_relevance(tokens, truth))
        return mean(values)

    return RelevanceScores(
        layer=layer, logit_lens=score("logit_lens"),
        logit_lens_suppressed=score("logit_lens_suppressed"), patchscope=score("patchscope"),
    )


def _relative_norm(artifact: AdlArtifact, layer: int) -> float:
    diff = artifact.difference
    index = diff.layer_index(layer)
    norms = diff.mean_diff[index].norm(dim=-1)[1:]
    return float(norms.mean() / diff.norm_base[index, 1:].mean())


@lru_cache(maxsize=2)
def _control_pair(kind: ControlKind, size: OrganismSize) -> ModelPair:
    if kind == "self":
        return load_model_pair(ModelPairSpec(base="smollm2-135m-instruct"))
    return load_organism_pair(at_size(get_organism(GENERIC_CONTROL), size))


def truth_of(organism: Organism) -> list[str]:
    _, description = organism.require_ground_truth()
    return ground_truth_sentences(description, organism.description_long, organism.key_facts)


def measure_signal(
    name: str,
    settings: AdlSettings,
    steering: SteeringSettings | None = None,
    steering_positions: list[int] | None = None,
    steering_prompts: list[str] | None = None,
    show_progress: bool = False,
    size: OrganismSize = "full",
    controls: Sequence[ControlKind] = CONTROL_KINDS,
) -> SignalReport:
    """ADL of the organism and the `controls` (default both), scored against the organism's
    ground truth. The organism and the generic-text control are built at `size`. The generic
    control is always measured (the layer rule contrasts against it). The self-pair's difference
    is exactly zero at every layer, so its readouts equal those of a zeroed difference: a caller
    that checks a zeroed difference itself (the suite) may leave it out."""
    organism = at_size(get_organism(name), size)
    truth = truth_of(organism)
    pair = load_organism_pair(organism)
    artifact = run_adl(pair, settings, show_progress=show_progress)
    measured = {
        kind: run_adl(_control_pair(kind, size), settings, show_progress=show_progress)
        for kind in dict.fromkeys(["generic", *controls])
    }
    primary = artifact.readouts.primary_layer
    report = SignalReport(
        organism=name,
        primary_layer=primary,
        relevance=relevance_at(artifact, truth, primary),
        relevance_by_layer=[relevance_at(artifact, truth, entry.layer) for entry in artifact.readouts.layers],
        control_self=relevance_at(measured["self"], truth, primary) if "self" in measured else None,
        control_generic=relevance_at(measured["generic"], truth, primary),
        relative_delta_norm=_relative_norm(artifact, primary),
        layer_choice=choose_primary_layer(artifact.readouts, measured["generic"].readouts),
    )
    if steering is not None:
        results = run_steering(pair, artifact, steering, positions=steering_positions,
                               prompts=steering_prompts, show_progress=show_progress)
        samples = [s for position in results for s in position.samples]
        data = [e.plain_text() for e in read_jsonl(organism_dir(organism) / "train.jsonl")]
        similarity = steering_similarity(
            [t for s in samples for t in s.steered], [t for s in samples for t in s.unsteered], data
        )
        report.steering_steered = similarity.steered
        report.steering_unsteered = similarity.unsteered
        report.steering_strengths = [s.strength for s in samples]
    return report


def coherence_pass_rate(
    pair: ModelPair,
    artifact: AdlArtifact,
    strength: float,
    temperature: float,
    samples_per_prompt: int = 8,
    positions: tuple[int, ...] = (1, 2),
    max_new_tokens: int = 40,
) -> float:
    """Share of samples the offline coherence grader accepts, steered at `strength` (0:
    unsteered) with the primary layer's difference at `positions`, over the steering prompts.
    The calibration of the strength search: unsteered answers must pass well above its 75%."""
    layer = artifact.readouts.primary_layer
    prompts = [p for p in load_prompt_set(QUICK.steering.search_prompt_set) for _ in range(samples_per_prompt)]
    rows = [(position, prompt) for position in positions for prompt in prompts]
    vectors = torch.stack([steering_direction(artifact.difference, layer, p) for p, _ in rows])
    samples = generate_steered(pair, [q for _, q in rows], vectors, [strength] * len(rows), layer,
                               max_new_tokens=max_new_tokens, temperature=temperature, seed=11)
    verdicts = OfflineCoherenceGrader(pair).grade([q for _, q in rows], samples)
    return sum(verdicts) / len(verdicts)
