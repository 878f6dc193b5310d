"""Worker configurations for organisms (which pair, which ADL and steering settings), and
`connect`: the worker an agent run talks to.

Importing this module loads no torch: a remote worker needs only the HTTP client. Building an
organism and serving it in-process (the worker extra) are imported when they are used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from evals.organisms import get_organism
from evals.organisms.schema import OrganismSize
from tools.adl.profiles import PROFILES, AnalysisProfile, profile_settings
from tools.errors import AdlInputError
from tools.model_spec import BackendName, LoadOptions
from tools.url import redact_url
from tools.worker.client import TOKEN_ENV, HttpWorkerClient, WorkerClient
from tools.worker.schema import WorkerConfig

log = logging.getLogger(__name__)

__all__ = ["PROFILES", "AnalysisProfile", "OwnWorkerOptions", "connect", "organism_worker_config"]

# What an in-process worker imports (the worker extra, `pip install 'adl-agent[worker]'`).
IN_PROCESS_MODULES = ("torch", "transformers", "transformer_lens", "peft")
BRIDGE_MODULE = "transformer_lens"  # needed by the `bridge` backend only


class OwnWorkerOptions(BaseModel):
    """How an organism's own worker loads and runs (a grid's `load`, `backend` and
    `steering_max_batch_size`; `adl worker serve --organism`'s device options)."""

    model_config = ConfigDict(frozen=True)

    load: LoadOptions | None = Field(None, description="Default: the CPU.")
    backend: BackendName = "bridge"
    steering_max_batch_size: int | None = Field(
        None, ge=1, description="Rows per steering generate call instead of the profile's (a "
        "memory setting: raise it on a GPU).")


def organism_worker_config(
    name: str,
    profile: AnalysisProfile = "paper",
    *,
    size: OrganismSize = "full",
    n_samples: int | None = None,
    options: OwnWorkerOptions | None = None,
) -> WorkerConfig:
    """The worker config of an organism (built first when needed).

    `profile`: `paper` (the reference toolkit's protocol) or `quick` (CI and the demo on 2 CPU
    cores), see tools/adl/profiles.py. `size`: the organism's build size
    (evals/organisms/build.py `at_size`). `options`: how it loads and runs (default: the CPU,
    the bridge, the profile's steering batch size); a missing build trains on its device."""
    from evals.organisms.build import at_size, organism_pair_spec

    organism = at_size(get_organism(name), size)
    analysis = profile_settings(profile)
    adl, steering, positions = analysis.adl, analysis.steering, analysis.steering_positions
    if n_samples is not None:
        adl = adl.model_copy(update={"n_samples": n_samples})
    options = options or OwnWorkerOptions()
    if options.steering_max_batch_size is not None:
        steering = steering.model_copy(update={"max_batch_size": options.steering_max_batch_size})
    load = options.load or LoadOptions()
    return WorkerConfig(
        label=organism.name, pair=organism_pair_spec(organism, load=load), load=load,
        backend=options.backend, adl=adl, steering=steering, steering_positions=positions,
    )


def connect(
    organism: str, worker_url: str | None, profile: str, size: OrganismSize = "full",
    *, not_used: Sequence[str] = (), worker_config: WorkerConfig | None = None,
    options: OwnWorkerOptions | None = None,
) -> WorkerClient:
    """A worker for `organism`: the one at `worker_url`, or an in-process service of
    `worker_config` (default: the organism's own, built at `size`, run with `options`).
    `not_used`: why the worker URLs tried were not used, for the error raised when an
    in-process worker cannot run (no worker extra)."""
    if profile not in PROFILES:
        raise AdlInputError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    if worker_url:
        client = HttpWorkerClient(worker_url, token=os.environ.get(TOKEN_ENV) or None)
        info = client.info()
        if info.label != organism:
            raise AdlInputError(f"The worker at {redact_url(worker_url)} serves {info.label!r}, not {organism!r}.")
        for note in info.notes:  # (an in-process worker logs its own as it starts)
            log.warning("The worker of %s: %s", organism, note)
        return client
    backend = (worker_config or options or OwnWorkerOptions()).backend
    needed = [m for m in IN_PROCESS_MODULES if backend == "bridge" or m != BRIDGE_MODULE]
    missing = [module for module in needed if not _installed(module)]
    if missing:
        tried = "; ".join(not_used) or "no worker URL was given"
        raise AdlInputError(
            f"No worker serves {organism!r} ({tried}), and running it in-process needs the worker "
            f"extra ({', '.join(missing)} not installed). Start a worker for {organism} "
            f"(`adl worker serve --organism {organism}` where the extra is installed) and pass its URL "
            "(--worker-url, ADL_WORKER_URL or an evaluation config's `workers:`), or install the "
            "worker extra (pip install 'adl-agent[worker]').")
    from tools.worker.service import AdlService

    return AdlService.start(worker_config or organism_worker_config(
        organism, profile, size=size, options=options))  # type: ignore[arg-type]


def _installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
