"""Export an experiment's runs for other tools: one row per run as CSV or JSON lines (pandas:
`read_csv`, `read_json(lines=True)`), or Inspect eval logs (`evals.inspect_logs`).

Export only reads the store, so it can be repeated at any time (also while a grid runs: a run
still going is exported with its status). Each file is written next to its target and renamed
over it, so a reader never sees half a file and an earlier export is replaced whole.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel

from evals.compare import SUCCESS_GRADE
from evals.organisms import get_organism
from evals.store import Experiment, Run, Store
from tools.errors import AdlError, AdlInputError, CacheWriteError

ExportFormat = Literal["inspect", "csv", "jsonl"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("inspect", "csv", "jsonl")


class RunRow(BaseModel):
    """One run of an experiment, flat: what a dataframe of the experiment holds per row."""

    experiment: str
    run_id: int
    unit_key: str
    organism: str
    organism_type: str | None
    agent: str
    budget: int
    repeat: int
    provider: str
    provider_is_llm: bool
    status: str
    attempt: int
    end_reason: str | None
    detail: str | None
    hypothesis: str | None
    grade: float | None
    grader: str | None
    success: bool | None
    llm_calls: int
    tool_calls: int
    tool_errors: int
    interactions_used: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    wall_time_s: float | None
    started_at: str
    finished_at: str | None


def find_experiment(store: Store, name: str) -> Experiment:
    """The stored experiment `name` (`Store.require_experiment`)."""
    return store.require_experiment(name)


def organism_type(name: str) -> str | None:
    """The organism's ground-truth type (None: no ground truth, or not in this registry)."""
    try:
        kind = get_organism(name).type
    except AdlError:
        return None
    return None if kind is None else str(kind)


def run_rows(store: Store, experiment: str, grader: str | None = None) -> list[RunRow]:
    """Every run of `experiment` (finished or not), in run order, with its current grade
    (`Store.current_grade`: by `grader`, else the newest, as `adl eval compare` reads it)."""
    found = find_experiment(store, experiment)
    rows = []
    for run in store.runs(found.id):  # type: ignore[arg-type]
        calls = store.tool_calls(run.id)  # type: ignore[arg-type]
        grade = store.current_grade(run.id, grader)  # type: ignore[arg-type]
        rows.append(RunRow(
            experiment=experiment, run_id=run.id, unit_key=run.unit_key,  # type: ignore[arg-type]
            organism=run.organism, organism_type=organism_type(run.organism), agent=run.agent,
            budget=run.budget, repeat=run.repeat, provider=run.provider,
            provider_is_llm=run.provider_is_llm, status=run.status, attempt=run.attempt,
            end_reason=run.end_reason, detail=run.detail, hypothesis=run.hypothesis,
            grade=None if grade is None else grade.score,
            grader=None if grade is None else grade.grader,
            success=None if grade is None else grade.score >= SUCCESS_GRADE,
            llm_calls=run.llm_calls, tool_calls=len(calls),
            tool_errors=sum(not call.ok for call in calls),
            interactions_used=run.interactions_used, input_tokens=run.input_tokens,
            output_tokens=run.output_tokens, cost_usd=run.cost_usd, wall_time_s=run.wall_time_s,
            started_at=_iso(run, "started_at") or "", finished_at=_iso(run, "finished_at"),
        ))
    return rows


def _iso(run: Run, field: str) -> str | None:
    moment = getattr(run, field)
    return None if moment is None else moment.isoformat()


@contextmanager
def replacing(path: Path, mode: Literal["w", "wb"] = "w") -> Iterator[IO[Any]]:
    """A file to write that replaces `path` atomically when the block ends without an error
    (a temporary file in the same folder, renamed over it); nothing is left behind otherwise."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CacheWriteError(f"Cannot write {path}: {exc}") from exc
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as file:
            yield file
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise CacheWriteError(f"Cannot write {path}: {exc}") from exc
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_with(path: Path, write: Callable[[Path], object]) -> Path:
    """Have `write` write a temporary file next to `path` (same suffix), then rename it over
    `path`: for writers that take a path, not an open file."""
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, path)
    except OSError as exc:
        raise CacheWriteError(f"Cannot write {path}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_rows(rows: list[RunRow], path: Path, export_format: Literal["csv", "jsonl"]) -> Path:
    """The rows as one CSV (a header, one line per run) or JSON lines file at `path`."""
    with replacing(path) as handle:
        if export_format == "csv":
            writer = csv.DictWriter(handle, fieldnames=list(RunRow.model_fields))
            writer.writeheader()
            for row in rows:
                writer.writerow(row.model_dump())
        else:
            for row in rows:
                handle.write(json.dumps(row.model_dump(mode="json"), ensure_ascii=False) + "\n")
    return path


def file_slug(text: str) -> str:
    """`text` as a file-name part: letters, digits, `.`, `_` and `-` kept, anything else `-`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def export_experiment(store: Store, experiment: str, export_format: ExportFormat,
                      out: Path, grader: str | None = None) -> list[Path]:
    """Write the experiment's export in `export_format` into the folder `out`, each run with
    its grade by `grader` (default: its newest); the paths written (Inspect: one log per agent,
    budget and provider)."""
    if export_format not in EXPORT_FORMATS:
        raise AdlInputError(f"Unknown export format {export_format!r}; use one of "
                            f"{', '.join(EXPORT_FORMATS)}.")
    if grader is not None:
        grader = store.require_grader(experiment, grader)
    if export_format == "inspect":
        from evals.inspect_logs import write_inspect_logs

        return write_inspect_logs(store, experiment, out, grader)
    rows = run_rows(store, experiment, grader)
    return [write_rows(rows, out / f"{file_slug(experiment)}_runs.{export_format}", export_format)]
