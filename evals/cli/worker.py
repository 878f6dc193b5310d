"""`adl worker serve`: the model worker over HTTP (the worker extra)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from agent.judges import make_judges
from evals.cli.options import ORGANISM_DIRS_OPTION, use_organism_dirs
from evals.workers import PROFILES, OwnWorkerOptions, organism_worker_config
from tools.config import load_yaml_model
from tools.errors import AdlInputError
from tools.model_spec import parse_load_options
from tools.secrets import install_log_redaction
from tools.worker.client import DEFAULT_PORT, TOKEN_ENV
from tools.worker.schema import WorkerConfig

app = typer.Typer(help="The model worker: holds the model pair and serves the ADL tools.",
                  no_args_is_help=True)


def load_worker_config(path: Path) -> WorkerConfig:
    """A WorkerConfig from YAML; errors name the file and the field."""
    return load_yaml_model(path, WorkerConfig, "worker config")


@app.command("serve")
def serve_command(
    organism: str | None = typer.Option(None, help="Organism to serve (see `adl organisms list`)."),
    config: Path | None = typer.Option(None, help="A WorkerConfig YAML file instead of an organism."),
    profile: str = typer.Option("paper", help=f"Analysis settings for --organism: {', '.join(PROFILES)}."),
    samples: int | None = typer.Option(None, min=1, help="Override N (corpus samples)."),
    size: str = typer.Option("full", help="Build size of an offline organism: full (the "
                             "registry's) or small (fewer examples, same recipe)."),
    host: str = typer.Option("127.0.0.1", help="Bind address; non-loopback needs a token."),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ... or mps."),
    dtype: str = typer.Option("auto", help="auto (float32 on a CPU, bfloat16 on a GPU), "
                              "float32, bfloat16 or float16."),
    device_map: str | None = typer.Option(
        None, "--device-map", help="Placement of a model larger than one GPU (accelerate): auto, "
        "balanced, sequential, or a JSON object {module: device}; --device names the GPU type."),
    threads: int | None = typer.Option(None, min=1, help="torch threads (default: the CPUs "
                                       "this process may use, its affinity)."),
    judge: str | None = typer.Option(None, help="Provider spec of an LLM judge (Patchscope scale, "
                                     "steering coherence); default: offline."),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
    allowed_host: list[str] | None = typer.Option(
        None, "--allowed-host", help="A further Host header name to accept (repeatable; for "
        "example the name other machines use). Default: loopback names and the bind address; "
        "any name when bound to 0.0.0.0 without one."),
) -> None:
    """Load the pair once, compute or load its ADL, and serve the tools until stopped."""
    from tools.worker.http import check_bind, serve
    from tools.worker.service import AdlService

    use_organism_dirs(organism_dirs)
    install_log_redaction()
    token = os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)  # before any model is loaded
    if (organism is None) == (config is None):
        raise AdlInputError("Give exactly one of --organism NAME or --config FILE.")
    if profile not in PROFILES:
        raise AdlInputError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    load = parse_load_options(device, dtype, device_map)
    from tools.machine import set_torch_threads

    set_torch_threads(threads)  # before any model work; it logs the count
    if organism is not None:
        worker_config = organism_worker_config(organism, profile, size=size, n_samples=samples,  # type: ignore[arg-type]
                                               options=OwnWorkerOptions(load=load))
    else:
        worker_config = load_worker_config(config)  # type: ignore[arg-type]
        if samples is not None:
            worker_config.adl = worker_config.adl.model_copy(update={"n_samples": samples})
    if judge is not None:
        worker_config.judge = judge
    judges = make_judges(worker_config.judge)
    serve(lambda: AdlService.start(worker_config, **judges), host=host, port=port, token=token,
          extra_host_names=allowed_host or ())
