"""Worker configurations for organisms: which pair, which ADL and steering settings."""

from __future__ import annotations

from typing import Literal

from evals.adl_signal import (
    SIGNAL_ADL,
    SIGNAL_STEERING,
    SIGNAL_STEERING_POSITIONS,
)
from evals.organisms import get_organism
from evals.organisms.build import OrganismSize, at_size, organism_pair_spec
from tools.adl.pipeline import AdlSettings
from tools.adl.steering import SteeringSettings
from tools.models import LoadOptions
from tools.worker.schema import WorkerConfig

AnalysisProfile = Literal["paper", "quick"]
PROFILES: tuple[AnalysisProfile, ...] = ("paper", "quick")


def organism_worker_config(
    name: str,
    profile: AnalysisProfile = "paper",
    *,
    size: OrganismSize = "full",
    n_samples: int | None = None,
    load: LoadOptions | None = None,
) -> WorkerConfig:
    """The worker config of an organism (built first when needed).

    `paper`: N = 10,000, positions 0..4, steering searched at every position with the default
    search. `quick` (CI and the demo on 2 CPU cores): N = 1,000, a coarser Patchscope scale
    grid, steering at positions 1 and 2
    with a smaller search and more samples per prompt (evals/adl_signal.py). `size`: the
    organism's build size (evals/organisms/build.py `at_size`)."""
    organism = at_size(get_organism(name), size)
    if profile == "paper":
        adl, steering = AdlSettings(), SteeringSettings()
        prompts, positions = None, None
    else:
        adl, steering = SIGNAL_ADL, SIGNAL_STEERING
        prompts, positions = None, list(SIGNAL_STEERING_POSITIONS)
    if n_samples is not None:
        adl = adl.model_copy(update={"n_samples": n_samples})
    return WorkerConfig(
        label=organism.name, pair=organism_pair_spec(organism), load=load or LoadOptions(),
        adl=adl, steering=steering, steering_prompts=prompts, steering_positions=positions,
    )
