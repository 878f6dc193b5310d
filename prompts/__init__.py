"""Prompt, prompt-set and rubric templates, kept as files next to this module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PROMPTS_DIR = Path(__file__).parent


def prompt_path(name: str) -> Path:
    """Path of a file in prompts/ (raises FileNotFoundError naming it when absent)."""
    path = PROMPTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"No prompt file {name!r} in {PROMPTS_DIR}")
    return path


def load_text(name: str) -> str:
    """A text template."""
    return prompt_path(name).read_text(encoding="utf-8")


def load_prompt_set(name: str | Path) -> list[str]:
    """A YAML prompt set: a mapping with a `prompts` list of strings (a file in prompts/ by
    name, or any file by path)."""
    path = name if isinstance(name, Path) else prompt_path(name)
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name}: expected a mapping with a 'prompts' list of strings.")
    return prompts
