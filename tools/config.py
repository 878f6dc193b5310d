"""Reading YAML configuration files into pydantic models with errors that name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tools.errors import AdlInputError
from tools.validation import validation_problems

Model = TypeVar("Model", bound=BaseModel)


def load_yaml_model(path: Path, model: type[Model], what: str) -> Model:
    """`model` from the YAML file at `path`; errors name the file and the field."""
    try:
        return model.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as exc:
        raise AdlInputError(f"No {what} at {path}.") from exc
    except yaml.YAMLError as exc:
        raise AdlInputError(f"{path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems, _ = validation_problems(exc, whole=what)
        raise AdlInputError(f"{path}: invalid {what}: {problems}") from exc
