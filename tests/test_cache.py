"""Cache entries: atomic, reused, and rebuilt when half-written or corrupted."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tools import cache
from tools.cache import ensure_entry, entry_is_valid, entry_metadata
from tools.errors import CacheWriteError


def _writer(calls: list[int]):
    def build(tmp: Path) -> dict[str, int]:
        calls.append(1)
        (tmp / "weights.bin").write_bytes(b"x" * 1000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text('{"a": 1}')
        return {"n": len(calls)}

    return build


def test_adl_home_follows_environment(adl_home: Path) -> None:
    assert cache.adl_home() == adl_home and adl_home.is_dir()


def test_entry_is_built_once_and_reused(adl_home: Path) -> None:
    calls: list[int] = []
    target = adl_home / "entry"
    ensure_entry(target, _writer(calls))
    ensure_entry(target, _writer(calls))
    assert len(calls) == 1
    assert entry_is_valid(target)
    assert entry_metadata(target) == {"n": 1}


def test_corrupted_entry_is_rebuilt(adl_home: Path) -> None:
    calls: list[int] = []
    target = adl_home / "entry"
    ensure_entry(target, _writer(calls))
    (target / "weights.bin").write_bytes(b"y" * 1000)  # same size, different content
    assert not entry_is_valid(target)
    ensure_entry(target, _writer(calls))
    assert len(calls) == 2 and entry_is_valid(target)
    assert (target / "weights.bin").read_bytes() == b"x" * 1000


def test_truncated_and_half_written_entries_are_rebuilt(adl_home: Path) -> None:
    calls: list[int] = []
    target = adl_home / "entry"
    ensure_entry(target, _writer(calls))
    (target / "weights.bin").write_bytes(b"x" * 10)
    ensure_entry(target, _writer(calls))
    (target / ".adl-entry.json").unlink()  # as if the process died before completing
    ensure_entry(target, _writer(calls))
    assert len(calls) == 3 and entry_is_valid(target)


def test_failed_build_leaves_nothing_behind(adl_home: Path) -> None:
    target = adl_home / "entry"

    def broken(tmp: Path) -> None:
        (tmp / "partial.bin").write_bytes(b"...")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ensure_entry(target, broken)
    assert not target.exists()
    assert [p for p in adl_home.iterdir() if "tmp" in p.name] == []


def test_full_disk_gives_clear_error(adl_home: Path) -> None:
    def no_space(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheWriteError, match="No space left"):
        ensure_entry(adl_home / "entry", no_space, what="test entry")
    assert not (adl_home / "entry").exists()
