"""The organism registry: every `*.yaml` file in evals/organisms/registry/ and in the
directories named by `$ADL_ORGANISMS` (a path list) or `--organisms DIR` on the command line."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from evals.organisms.schema import Organism
from tools.errors import OrganismConfigError, UnknownOrganismError
from tools.validation import validation_problems

REGISTRY_DIR = Path(__file__).parent / "registry"
ORGANISMS_ENV = "ADL_ORGANISMS"


def load_organism_file(path: Path, expected_name: str | None = None) -> Organism:
    """Parse and validate one organism file; errors name the file and the field. The organism's
    name must be the file's stem (or `expected_name`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise OrganismConfigError(f"{path}: not valid YAML ({exc}).") from exc
    except OSError as exc:
        raise OrganismConfigError(f"{path}: cannot be read ({exc.strerror}).") from exc
    if not isinstance(data, dict):
        raise OrganismConfigError(f"{path}: expected a mapping of fields, got {type(data).__name__}.")
    try:
        organism = Organism.model_validate(data)
    except ValidationError as exc:
        problems, _ = validation_problems(exc, whole="organism", label="field '{}'")
        raise OrganismConfigError(f"{path}: {problems}") from exc
    stem = expected_name or path.stem
    if organism.name != stem:
        raise OrganismConfigError(
            f"{path}: field 'name' is {organism.name!r} but the file is named {stem!r}."
        )
    return organism


def organism_dirs() -> tuple[Path, ...]:
    """The packaged registry, then every directory of `$ADL_ORGANISMS` (os.pathsep-separated)."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(ORGANISMS_ENV, "").split(os.pathsep)
             if p.strip()]
    return tuple(dict.fromkeys([REGISTRY_DIR, *extra]))


def add_organism_dirs(directories: Sequence[Path]) -> None:
    """Add directories to the registry for this process and the processes it starts (they are
    appended to `$ADL_ORGANISMS`)."""
    for directory in directories:
        if not directory.is_dir():
            raise OrganismConfigError(f"--organisms {directory}: not a directory.")
    known = [str(d) for d in organism_dirs()[1:]]
    added = [str(d.expanduser().resolve()) for d in directories]
    os.environ[ORGANISMS_ENV] = os.pathsep.join(dict.fromkeys([*known, *added]))


@lru_cache(maxsize=8)
def _load_registry(directories: tuple[Path, ...]) -> dict[str, Organism]:
    organisms: dict[str, Organism] = {}
    origins: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            raise OrganismConfigError(
                f"Organism directory {directory} (from ${ORGANISMS_ENV} or --organisms) does not exist.")
        for path in sorted(directory.glob("*.yaml")):
            organism = load_organism_file(path)
            if organism.name in origins:
                raise OrganismConfigError(
                    f"Organism {organism.name!r} is defined twice: {origins[organism.name]} and {path}.")
            organisms[organism.name] = organism
            origins[organism.name] = path
    return dict(sorted(organisms.items()))


def list_organisms(directories: Sequence[Path] | None = None) -> list[Organism]:
    """All organisms of `directories` (default: the packaged registry and the added
    directories), sorted by name."""
    return list(_load_registry(tuple(directories or organism_dirs())).values())


def get_organism(name: str, directories: Sequence[Path] | None = None) -> Organism:
    """One organism by name from `directories` (default as `list_organisms`), or an error
    listing the known names."""
    registry = _load_registry(tuple(directories or organism_dirs()))
    if name not in registry:
        raise UnknownOrganismError(
            f"Unknown organism {name!r}. Known organisms: {', '.join(sorted(registry))}. "
            f"Add a directory of organism files with --organisms DIR or ${ORGANISMS_ENV}."
        )
    return registry[name]
