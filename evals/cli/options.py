"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

from evals.organisms.registry import ORGANISMS_ENV, add_organism_dirs

ORGANISM_DIRS_OPTION = typer.Option(
    None, "--organisms", file_okay=False, dir_okay=True,
    help=f"A directory of organism YAML files added to the packaged registry (repeatable; "
         f"also ${ORGANISMS_ENV}, a path list).",
)


def use_organism_dirs(directories: list[Path] | None) -> None:
    """Add `--organisms` directories to the registry (and to the worker processes started)."""
    if directories:
        add_organism_dirs(directories)
