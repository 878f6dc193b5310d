"""The organism registry: every `*.yaml` file in evals/organisms/registry/."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from evals.organisms.schema import Organism
from tools.errors import OrganismConfigError, UnknownOrganismError

REGISTRY_DIR = Path(__file__).parent / "registry"


def load_organism_file(path: Path) -> Organism:
    """Parse and validate one organism file; errors name the file and the field."""
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
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()
        )
        raise OrganismConfigError(f"{path}: {problems}") from exc
    if organism.name != path.stem:
        raise OrganismConfigError(
            f"{path}: field 'name' is {organism.name!r} but the file is named {path.stem!r}."
        )
    return organism


@lru_cache(maxsize=4)
def _load_registry(directory: Path) -> dict[str, Organism]:
    organisms: dict[str, Organism] = {}
    for path in sorted(directory.glob("*.yaml")):
        organism = load_organism_file(path)
        organisms[organism.name] = organism
    return organisms


def list_organisms(directory: Path = REGISTRY_DIR) -> list[Organism]:
    """All registered organisms, sorted by name."""
    return list(_load_registry(directory).values())


def get_organism(name: str, directory: Path = REGISTRY_DIR) -> Organism:
    """One organism by name, or an error listing the known names."""
    registry = _load_registry(directory)
    if name not in registry:
        raise UnknownOrganismError(
            f"Unknown organism {name!r}. Known organisms: {', '.join(sorted(registry))}."
        )
    return registry[name]
