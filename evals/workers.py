"""Worker configurations for organisms: which pair, which ADL and steering settings."""

from __future__ import annotations

from evals.organisms import get_organism
from evals.organisms.build import OrganismSize, at_size, organism_pair_spec
from tools.adl.profiles import PROFILES, AnalysisProfile, profile_settings
from tools.models import LoadOptions
from tools.worker.schema import WorkerConfig

__all__ = ["PROFILES", "AnalysisProfile", "organism_worker_config"]


def organism_worker_config(
    name: str,
    profile: AnalysisProfile = "paper",
    *,
    size: OrganismSize = "full",
    n_samples: int | None = None,
    load: LoadOptions | None = None,
) -> WorkerConfig:
    """The worker config of an organism (built first when needed).

    `profile`: `paper` (the reference toolkit's protocol) or `quick` (CI and the demo on 2 CPU
    cores), see tools/adl/profiles.py. `size`: the organism's build size
    (evals/organisms/build.py `at_size`)."""
    organism = at_size(get_organism(name), size)
    analysis = profile_settings(profile)
    adl, steering, positions = analysis.adl, analysis.steering, analysis.steering_positions
    if n_samples is not None:
        adl = adl.model_copy(update={"n_samples": n_samples})
    return WorkerConfig(
        label=organism.name, pair=organism_pair_spec(organism), load=load or LoadOptions(),
        adl=adl, steering=steering, steering_positions=positions,
    )
