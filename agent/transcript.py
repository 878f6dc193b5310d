"""Transcripts: one JSON line per event, appended and flushed to disk as it happens, so a
killed run keeps everything up to the kill. Secrets are redacted before anything is written."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel

from tools.errors import CacheWriteError
from tools.secrets import redact

EventKind = Literal["run_started", "message", "llm_call", "tool_call", "notice", "compaction", "run_ended"]


class TranscriptEvent(BaseModel):
    seq: int
    time: str
    kind: EventKind
    data: dict[str, Any]


class TranscriptWriter:
    """Appends events to `path` (JSON lines), flushing and syncing after each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = len(read_transcript(path)) if path.exists() else 0
        self._file = path.open("a", encoding="utf-8")
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # a line cut off by a kill stays alone on its line

    def write(self, kind: EventKind, **data: Any) -> TranscriptEvent:
        event = TranscriptEvent(seq=self._seq, time=dt.datetime.now(dt.UTC).isoformat(),
                                kind=kind, data=data)
        line = redact(event.model_dump_json()) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise CacheWriteError(f"Cannot write the transcript {self.path}: {exc}") from exc
        self._seq += 1
        return event

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_transcript(path: Path) -> list[TranscriptEvent]:
    """Every complete event of a transcript (a line cut off by a kill is skipped)."""
    events: list[TranscriptEvent] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            events.append(TranscriptEvent.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValueError):
            continue
    return events
