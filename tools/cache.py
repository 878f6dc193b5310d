"""The cache directory ($ADL_HOME) and atomic, verified cache entries.

Every computed artifact (converted models, organisms, ADL results) is a *cache entry*: a folder
that is built in a temporary sibling folder and renamed into place only when complete. A
manifest inside it records the size and SHA-256 of every file, so a half-written or corrupted
entry is detected on the next use and rebuilt instead of crashing a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import platformdirs

from tools.errors import CacheWriteError

ADL_HOME_ENV = "ADL_HOME"
MANIFEST_NAME = ".adl-entry.json"
_HASH_CHUNK = 8 * 1024 * 1024

log = logging.getLogger(__name__)


def adl_home() -> Path:
    """The cache root: `$ADL_HOME`, else the user's cache dir (for example ~/.cache/adl-agent)."""
    root = os.environ.get(ADL_HOME_ENV) or platformdirs.user_cache_dir("adl-agent")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_records(root: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.name != MANIFEST_NAME:
            rel = file.relative_to(root).as_posix()
            records[rel] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    return records


def entry_is_valid(path: Path) -> bool:
    """True when `path` is a complete entry whose files all match its manifest."""
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False
    for rel, record in recorded.items():
        file = path / rel
        if not file.is_file() or file.stat().st_size != record["size"]:
            return False
        if sha256_file(file) != record["sha256"]:
            return False
    return True


def entry_metadata(path: Path) -> dict[str, Any]:
    """The metadata stored with an entry when it was built."""
    return json.loads((path / MANIFEST_NAME).read_text())["metadata"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so two processes never build the same entry at once."""
    lock_path = path.parent / f".{path.name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_entry(
    path: Path,
    build: Callable[[Path], dict[str, Any] | None],
    *,
    overwrite: bool = False,
    what: str = "cache entry",
) -> Path:
    """Return `path` as a valid entry, building it with `build(tmp_dir)` when missing or corrupt.

    `build` writes files into the temporary folder it is given and may return metadata to store
    in the manifest. The folder is renamed into place only after it completed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if not overwrite and entry_is_valid(path):
            return path
        if path.exists():
            reason = "overwrite requested" if overwrite else "incomplete or corrupted"
            log.warning("Rebuilding %s at %s (%s).", what, path, reason)
            shutil.rmtree(path)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            metadata = build(tmp) or {}
            manifest = {"files": _file_records(tmp), "metadata": metadata}
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                raise CacheWriteError(
                    f"No space left on the device while writing {what} to {path}. Free some "
                    f"space or point ${ADL_HOME_ENV} at a larger disk, then run again; nothing "
                    "that was already complete is lost."
                ) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path
