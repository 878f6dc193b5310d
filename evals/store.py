"""The results store (sqlmodel): experiments, runs, messages, tool calls and grades.

SQLite file by default (`$ADL_RESULTS/adl.db`), any SQLAlchemy URL (PostgreSQL, ...) by
setting `ADL_DATABASE_URL` or passing `url`. The schema is versioned with Alembic migrations
(`evals/migrations/`); `open_store` upgrades a database to the newest version before use.

A run is one unit of an experiment's grid (organism x agent x budget x repeat x provider),
stored exactly once: `(experiment_id, unit_key)` is unique. A unit that was interrupted stays
`running`; resuming deletes its rows and runs it again (its partial transcript file is kept).

Several runners may work on one experiment. Each claimed run records its owner (host, pid and
a random `attempt_id`) and a heartbeat, renewed every `HEARTBEAT_S` seconds while the runner
holds it. A `running` run is left alone while its owner is live; it is taken over only when
stale: its heartbeat is older than `STALE_AFTER_S` seconds, or its owner is a dead process on
this host (or this process, which no longer holds it). Run ids are never reused (AUTOINCREMENT
on SQLite), and `finish_unit` stores a result only for the attempt that still owns the run:
a runner whose run was taken over gets `RunTakenOverError`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import JSON, Column, UniqueConstraint, delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from agent.errors import TranscriptFormatError
from agent.transcript import (
    MAX_PROBLEMS_SHOWN,
    LlmCallEvent,
    MessageData,
    MessageEvent,
    RunStartedData,
    RunStartedEvent,
    ToolCallData,
    ToolCallEvent,
    read_transcript,
)
from tools.errors import AdlError, AdlInputError
from tools.validation import validation_problems

SCHEMA_VERSION = "0003"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_RELEASED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # the heartbeat of a run its runner let go
_CLAIM_TRIES = 5

log = logging.getLogger(__name__)
# Attempts this process is working on, over all its stores (a run owned by this pid whose
# attempt is not here was left behind by an earlier grid in this process).
_live_attempts: set[str] = set()
_live_lock = threading.Lock()


class RunTakenOverError(AdlError):
    """Another runner took this run over (it looked stale): this runner's result is not stored."""


class _ClaimRace(Exception):
    """Another runner changed the unit's row while this one was claiming it."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(moment: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back without a zone; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _pid_alive(pid: int) -> bool:
    """True when process `pid` of this host exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class Experiment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: dt.datetime = Field(default_factory=_now)


class Run(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("experiment_id", "unit_key", name="uq_run_unit"),
                      {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    unit_key: str
    organism: str = Field(index=True)
    organism_is_control: bool | None = Field(
        default=None, description="Recorded when the run starts; None in rows written before.")
    agent: str
    budget: int
    repeat: int
    provider: str
    provider_is_llm: bool = True
    status: str = Field(default="running", description="running, finished")
    attempt: int = 1
    attempt_id: str | None = Field(default=None, description="Random id of this attempt.")
    owner_host: str | None = None
    owner_pid: int | None = None
    heartbeat_at: dt.datetime | None = None
    end_reason: str | None = None
    detail: str | None = None
    hypothesis: str | None = None
    transcript_path: str | None = None
    llm_calls: int = 0
    interactions_used: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    wall_time_s: float | None = None
    started_at: dt.datetime = Field(default_factory=_now)
    finished_at: dt.datetime | None = None


class Message(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    seq: int
    role: str
    content: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ToolCallRecord(SQLModel, table=True):
    __tablename__ = "tool_call"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    seq: int
    call_id: str
    name: str
    arguments: str
    ok: bool
    result: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = None
    interactions: int = 0
    latency_s: float = 0.0
    interactions_left: int | None = None


class Usage(SQLModel, table=True):
    """One agent LLM call: tokens, dollars (None = unknown price), latency, attempts."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    seq: int
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: int = 1


class Grade(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    grader: str
    score: float = Field(description="Mean over the grader's repetitions, 1-5.")
    reasoning: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


def default_database_url() -> str:
    """$ADL_DATABASE_URL, or a SQLite file in the results folder."""
    if url := os.environ.get("ADL_DATABASE_URL"):
        return url
    results = Path(os.environ.get("ADL_RESULTS") or "adl-results").expanduser().resolve()
    results.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results / 'adl.db'}"


class Store:
    """Typed access to the results database."""

    def __init__(self, engine: Engine, stale_after_s: float = STALE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.engine = engine
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self._claims: dict[int, str] = {}  # run id -> attempt id this store holds
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # -- experiments and runs -----------------------------------------------------------------

    def experiment(self, name: str, config: dict[str, Any] | None = None) -> Experiment:
        """The experiment called `name`, created with `config` when new."""
        with self.session() as session:
            found = session.exec(select(Experiment).where(Experiment.name == name)).first()
            if found is None:
                found = Experiment(name=name, config=config or {})
                session.add(found)
                try:
                    session.commit()
                except IntegrityError:  # another runner created it at the same moment
                    session.rollback()
                    return session.exec(select(Experiment).where(Experiment.name == name)).one()
                session.refresh(found)
            return found

    def find_experiment(self, name: str) -> Experiment | None:
        with self.session() as session:
            return session.exec(select(Experiment).where(Experiment.name == name)).first()

    def require_experiment(self, name: str) -> Experiment:
        """The experiment `name`; `AdlInputError` lists the stored ones when it is missing."""
        found = self.find_experiment(name)
        if found is None:
            names = [e.name for e in self.experiments()]
            raise AdlInputError(f"No experiment {name!r}; stored: {', '.join(names) or 'none'}.")
        return found

    def experiments(self) -> list[Experiment]:
        with self.session() as session:
            return list(session.exec(select(Experiment).order_by(Experiment.id)))

    def runs(self, experiment_id: int, status: str | None = None) -> list[Run]:
        with self.session() as session:
            query = select(Run).where(Run.experiment_id == experiment_id)
            if status:
                query = query.where(Run.status == status)
            return list(session.exec(query.order_by(Run.id)))

    def run(self, run_id: int) -> Run | None:
        with self.session() as session:
            return session.get(Run, run_id)

    def is_live(self, run: Run) -> bool:
        """True while `run`'s owner may still be working on it (see the module docstring)."""
        if run.attempt_id is None:  # written before runs had owners
            return False
        if run.owner_host == socket.gethostname() and run.owner_pid is not None:
            if run.owner_pid == os.getpid():
                with _live_lock:
                    return run.attempt_id in _live_attempts
            if not _pid_alive(run.owner_pid):
                return False
        beat = _aware(run.heartbeat_at or run.started_at)
        return (_now() - beat).total_seconds() < self.stale_after_s

    def start_unit(self, experiment_id: int, unit_key: str, **fields: Any) -> Run | None:
        """Claim a unit for this runner: None when it is finished or another live runner has
        it; a stale attempt is cleared and the unit starts again with the next attempt
        number (and a new run id). The claim is held (heartbeat) until `release`."""
        for tries_left in reversed(range(_CLAIM_TRIES)):
            try:
                run = self._claim(experiment_id, unit_key, fields)
                break
            except (_ClaimRace, IntegrityError, OperationalError) as exc:  # another runner was quicker
                if tries_left == 0:
                    raise
                log.debug("claiming %s again after %s", unit_key, type(exc).__name__)
                time.sleep(0.05 + 0.1 * (uuid.uuid4().int % 10) / 10)
        if run is None:
            return None
        with self._lock:
            self._claims[run.id] = run.attempt_id  # type: ignore[index,assignment]
            with _live_lock:
                _live_attempts.add(run.attempt_id)  # type: ignore[arg-type]
            if self._beat is None:
                self._beat = threading.Thread(target=self._heartbeat_loop, name="adl-run-heartbeat",
                                              daemon=True)
                self._beat.start()
        return run

    def _claim(self, experiment_id: int, unit_key: str, fields: dict[str, Any]) -> Run | None:
        with self.session() as session:
            existing = session.exec(select(Run).where(Run.experiment_id == experiment_id,
                                                      Run.unit_key == unit_key)).first()
            attempt = 1
            if existing is not None:
                if existing.status == "finished":
                    return None
                if self.is_live(existing):
                    log.info("unit %s is being run by %s (pid %s, attempt %d); left to it",
                             unit_key, existing.owner_host, existing.owner_pid, existing.attempt)
                    return None
                log.warning("unit %s: taking over stale attempt %d (owner %s, pid %s, heartbeat %s)",
                            unit_key, existing.attempt, existing.owner_host, existing.owner_pid,
                            existing.heartbeat_at)
                attempt = existing.attempt + 1
                self._delete_children(session, existing.id)  # type: ignore[arg-type]
                beat = existing.heartbeat_at
                unchanged = [Run.id == existing.id, Run.status == "running",
                             Run.heartbeat_at.is_(None) if beat is None else Run.heartbeat_at == beat]  # type: ignore[union-attr]
                gone = session.exec(delete(Run).where(*unchanged))  # type: ignore[arg-type]
                if gone.rowcount != 1:  # its owner beat, finished, or another runner took it over
                    session.rollback()
                    raise _ClaimRace(unit_key)
            run = Run(experiment_id=experiment_id, unit_key=unit_key, attempt=attempt,
                      attempt_id=uuid.uuid4().hex, owner_host=socket.gethostname(),
                      owner_pid=os.getpid(), heartbeat_at=_now(), **fields)
            session.add(run)
            session.commit()
            session.refresh(run)
            return run

    def heartbeat(self) -> None:
        """Renew the heartbeat of every run this store holds; drop those taken over."""
        with self._lock:
            claims = dict(self._claims)
        for run_id, attempt_id in claims.items():
            if not self._touch(run_id, attempt_id):
                log.warning("run %d was taken over by another runner; its result will not be stored",
                            run_id)
                self.release(run_id)

    def _touch(self, run_id: int, attempt_id: str, **values: Any) -> bool:
        """Set `values` and a fresh heartbeat on the run if `attempt_id` still owns it."""
        with self.session() as session:
            result = session.exec(update(Run).where(Run.id == run_id, Run.attempt_id == attempt_id)  # type: ignore[arg-type]
                                  .values(heartbeat_at=_now(), **values))
            session.commit()
            return result.rowcount == 1

    def _heartbeat_loop(self) -> None:
        while True:
            time.sleep(self.heartbeat_s)
            with self._lock:
                if not self._claims:
                    self._beat = None
                    return
            try:
                self.heartbeat()
            except Exception as exc:  # noqa: BLE001 - database busy or gone: the next beat tries again
                log.warning("run heartbeat failed: %s", exc)

    def release(self, run_id: int) -> None:
        """This runner stops working on `run_id` (finished and graded, or given up): its
        heartbeat stops, and a run left unfinished may be taken over at once."""
        with self._lock:
            attempt_id = self._claims.pop(run_id, None)
        if attempt_id is None:
            return
        with _live_lock:
            _live_attempts.discard(attempt_id)
        try:
            with self.session() as session:
                session.exec(update(Run).where(Run.id == run_id, Run.attempt_id == attempt_id)  # type: ignore[arg-type]
                             .values(heartbeat_at=_RELEASED))
                session.commit()
        except OperationalError as exc:  # the run then goes stale by its heartbeat's age
            log.warning("could not release run %d: %s", run_id, exc)

    def _owned(self, run_id: int) -> str:
        with self._lock:
            attempt_id = self._claims.get(run_id)
        if attempt_id is None:
            raise RunTakenOverError(f"Run {run_id} is not held by this runner (taken over by "
                                    "another, or never claimed here); its result is not stored.")
        return attempt_id

    def set_transcript(self, run_id: int, path: Path) -> None:
        if not self._touch(run_id, self._owned(run_id), transcript_path=str(path)):
            raise RunTakenOverError(f"Run {run_id} was taken over by another runner.")

    def finish_unit(self, run_id: int, outcome: dict[str, Any], grade: Grade | None) -> Run:
        """Store the outcome, the transcript's messages, tool calls and usage, and the grade,
        in one transaction, and mark the run finished; only while this runner's attempt owns
        the run (else `RunTakenOverError`, and nothing is written)."""
        attempt_id = self._owned(run_id)
        with self.session() as session:
            # Writing first takes the row (SQLite: the database) until commit, so no other
            # runner can take the run over between this check and the commit.
            owned = session.exec(update(Run).where(Run.id == run_id, Run.attempt_id == attempt_id,  # type: ignore[arg-type]
                                                   Run.status == "running")
                                 .values(heartbeat_at=_now()))
            run = session.get(Run, run_id)
            if owned.rowcount != 1 or run is None:
                session.rollback()
                raise RunTakenOverError(f"Run {run_id} was taken over by another runner; this "
                                        "runner's result is not stored.")
            for key in ("end_reason", "detail", "hypothesis", "llm_calls", "interactions_used",
                        "input_tokens", "output_tokens", "cost_usd", "wall_time_s"):
                setattr(run, key, outcome.get(key, getattr(run, key)))
            if run.transcript_path and Path(run.transcript_path).exists():
                self._import_transcript(session, run_id, Path(run.transcript_path))
            if grade is not None:
                grade.run_id = run_id
                session.add(grade)
            run.status = "finished"
            run.finished_at = _now()
            session.add(run)
            session.commit()
            session.refresh(run)
            return run

    def add_grade(self, run_id: int, grade: Grade) -> bool:
        """Store a grade of a finished run (grading is its own step, so it can be redone). A run
        already graded by the same grader keeps its grade (two runners that both graded a run
        store one row); returns whether the grade was stored."""
        with self.session() as session:
            existing = session.exec(select(Grade).where(Grade.run_id == run_id,
                                                        Grade.grader == grade.grader)).first()
            if existing is not None:
                log.info("run %d already has a grade by %s; the new one is not stored", run_id,
                         grade.grader)
                return False
            grade.run_id = run_id
            session.add(grade)
            session.commit()
            return True

    # -- details ------------------------------------------------------------------------------

    def messages(self, run_id: int) -> list[Message]:
        with self.session() as session:
            return list(session.exec(select(Message).where(Message.run_id == run_id).order_by(Message.seq)))

    def tool_calls(self, run_id: int) -> list[ToolCallRecord]:
        with self.session() as session:
            return list(session.exec(select(ToolCallRecord).where(ToolCallRecord.run_id == run_id)
                                     .order_by(ToolCallRecord.seq)))

    def transcript(self, run_id: int) -> list[MessageData | ToolCallData]:
        """A run's messages and tool calls in order, as the transcript's event models: read
        from its transcript file while that exists (so a run still going shows its events so
        far), else from the rows stored when it finished. A line of the file that is not an
        event raises `TranscriptFormatError` naming the line and the field."""
        run = self.run(run_id)
        path = Path(run.transcript_path) if run is not None and run.transcript_path else None
        if path is not None and path.exists():
            return [event.data for event in read_transcript(path)
                    if isinstance(event, MessageEvent | ToolCallEvent)]
        rows: list[tuple[int, int, MessageData | ToolCallData]] = [
            (m.seq, 0, _row_event(run_id, "message", m.seq, MessageData, {
                "role": m.role, "content": m.content, "tool_calls": m.tool_calls}))
            for m in self.messages(run_id)]
        rows += [(c.seq, 1, _row_event(run_id, "tool call", c.seq, ToolCallData, {
            "id": c.call_id, "name": c.name, "arguments": c.arguments, "ok": c.ok,
            "result": c.result, "error": c.error, "interactions": c.interactions,
            "latency_s": c.latency_s, "interactions_left": c.interactions_left}))
            for c in self.tool_calls(run_id)]
        return [item for _, _, item in sorted(rows, key=lambda row: (row[0], row[1]))]

    def run_started(self, run_id: int) -> RunStartedData | None:
        """A run's settings as its transcript recorded them (the worker's facts among them);
        None when the transcript file is gone or has no start event."""
        run = self.run(run_id)
        path = Path(run.transcript_path) if run is not None and run.transcript_path else None
        if path is None or not path.exists():
            return None
        return next((e.data for e in read_transcript(path) if isinstance(e, RunStartedEvent)), None)

    def usage(self, run_id: int) -> list[Usage]:
        with self.session() as session:
            return list(session.exec(select(Usage).where(Usage.run_id == run_id).order_by(Usage.seq)))

    def grades(self, run_id: int) -> list[Grade]:
        """A run's grades, oldest first (`adl eval regrade` adds grades next to the old ones)."""
        with self.session() as session:
            return list(session.exec(select(Grade).where(Grade.run_id == run_id).order_by(Grade.id)))  # type: ignore[arg-type]

    def current_grade(self, run_id: int, grader: str | None = None) -> Grade | None:
        """The grade every reader uses (compare, export, Inspect logs, the viewer): the one by
        `grader` when named, else the newest."""
        grades = [g for g in self.grades(run_id) if grader is None or g.grader == grader]
        return grades[-1] if grades else None

    def grader_names(self, experiment_id: int) -> list[str]:
        """The graders that graded any run of the experiment."""
        with self.session() as session:
            rows = session.exec(select(Grade.grader).join(Run, Grade.run_id == Run.id)  # type: ignore[arg-type]
                                .where(Run.experiment_id == experiment_id).distinct())
            return sorted(rows)

    def require_grader(self, experiment: str, grader: str) -> str:
        """The full name of the grader `grader` that graded runs of the experiment: the name
        itself, or the one name that adds a version to it (`llm:openai:gpt-5` for
        `llm:openai:gpt-5@prompts-…`). `AdlInputError`, listing the experiment's graders, when
        none or several match (a misspelt grader must not read as "every run ungraded")."""
        found = self.require_experiment(experiment)
        known = self.grader_names(found.id)  # type: ignore[arg-type]
        if grader in known:
            return grader
        versions = [name for name in known if name.startswith(f"{grader}@")]
        if len(versions) == 1:
            return versions[0]
        if versions:
            raise AdlInputError(f"{grader!r} names several graders of {experiment!r}; pick one: "
                                f"{', '.join(versions)}.")
        raise AdlInputError(f"No run of {experiment!r} was graded by {grader!r}; its graders: "
                            f"{', '.join(known) or 'none'}.")

    @staticmethod
    def _delete_children(session: Session, run_id: int) -> None:
        for table in (Message, ToolCallRecord, Usage, Grade):
            for row in session.exec(select(table).where(table.run_id == run_id)):  # type: ignore[attr-defined]
                session.delete(row)

    @staticmethod
    def _import_transcript(session: Session, run_id: int, path: Path) -> None:
        """Rows of the transcript's messages, tool calls and provider calls; a line that is not
        an event raises `TranscriptFormatError` (and nothing is stored)."""
        for event in read_transcript(path):
            if isinstance(event, MessageEvent):
                message = event.data
                session.add(Message(run_id=run_id, seq=event.seq, role=message.role,
                                    content=message.content,
                                    tool_calls=[c.model_dump() for c in message.tool_calls]))
            elif isinstance(event, ToolCallEvent):
                call = event.data
                session.add(ToolCallRecord(
                    run_id=run_id, seq=event.seq, call_id=call.id, name=call.name,
                    arguments=call.arguments, ok=call.ok, result=call.result, error=call.error,
                    interactions=call.interactions, latency_s=call.latency_s,
                    interactions_left=call.interactions_left))
            elif isinstance(event, LlmCallEvent):
                llm = event.data
                session.add(Usage(run_id=run_id, seq=event.seq, model=llm.model,
                                  input_tokens=llm.usage.input_tokens,
                                  output_tokens=llm.usage.output_tokens, cost_usd=llm.cost_usd,
                                  latency_s=llm.latency_s, attempts=llm.attempts))


def open_store(url: str | None = None) -> Store:
    """Open (creating or upgrading the schema with the migrations) the results database."""
    from evals.migrations import upgrade

    url = url or default_database_url()
    engine = create_engine(url, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {})
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not _at_head(engine):
        # Two runners opening a new SQLite file at once would both create the tables. Only a
        # migration takes the lock: a read-only results folder opens without writing a file.
        lock = Path(database).with_name(f".{Path(database).name}.migrate.lock")
        try:
            handle = lock.open("w")
        except OSError:
            upgrade(engine)
        else:
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                upgrade(engine)
    else:
        upgrade(engine)
    return Store(engine)


def _at_head(engine: Engine) -> bool:
    """True when the database's schema is already the newest (no migration due)."""
    from evals.migrations import current_revision

    try:
        return current_revision(engine) == SCHEMA_VERSION
    except OSError:
        return False


RowData = TypeVar("RowData", MessageData, ToolCallData)


def _row_event(run_id: int, kind: str, seq: int, model: type[RowData],
               row: dict[str, Any]) -> RowData:
    """The event data of a stored row; `TranscriptFormatError` names the run, the row and the
    fields that do not validate."""
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        shown, fields = validation_problems(exc, whole="the row", limit=MAX_PROBLEMS_SHOWN)
        raise TranscriptFormatError(None, None, fields[0] if fields else "the row", shown,
                                    where=f"run {run_id}, stored {kind} {seq}") from exc
