"""The agent's first message as data: its interaction budget and first look.

The loop writes the first message as text for language models and hands the same facts to the
provider as a `Briefing` on that turn, so a policy that is not a language model (the offline
heuristic) reads them without parsing prose.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class OverviewSample(BaseModel):
    """One steering prompt's steered and unsteered sample (cut as the overview shows them)."""

    prompt: str
    strength: float
    steered: str
    unsteered: str


class OverviewSteering(BaseModel):
    """The steered samples of one token position."""

    position: int
    null_difference: bool = Field(False, description="The difference here is zero: the steered "
                                  "samples are unsteered ones.")
    samples: list[OverviewSample]


class OverviewDataset(BaseModel):
    """One (anonymized) dataset of the overview: top tokens per position of both readouts."""

    dataset: str
    layer: int
    model_layers: int
    logit_lens_suppressed: dict[str, list[str]]
    patchscope: dict[str, list[str]]
    patchscope_note: str | None = None
    null_positions: list[int] = Field(default_factory=list, description="Positions whose "
                                      "difference is zero: their tokens are a zero vector's.")
    difference_note: str | None = None
    steering: list[OverviewSteering]


class AdlOverview(BaseModel):
    """What the ADL agent sees first (`Toolbox.overview`)."""

    available_layers: list[int]
    positions: int
    datasets: list[OverviewDataset]


class FinetunedSample(BaseModel):
    """One unsteered sample of the finetuned model and its prompt."""

    prompt: str
    generation: str


class FinetunedSamples(BaseModel):
    """What the blackbox agent sees first (`Toolbox.finetuned_samples`)."""

    examples: list[FinetunedSample]


class Briefing(BaseModel):
    """The facts of the first message: the interaction budget and the first look."""

    interactions: int = Field(ge=0, description="Model interactions the run may spend.")
    first_look: AdlOverview | FinetunedSamples
