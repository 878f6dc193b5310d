"""The results store (sqlmodel): experiments, runs, messages, tool calls and grades.

SQLite file by default (`$ADL_RESULTS/adl.db`), any SQLAlchemy URL (PostgreSQL, ...) by
setting `ADL_DATABASE_URL` or passing `url`. The schema is versioned with Alembic migrations
(`evals/migrations/`); `open_store` upgrades a database to the newest version before use.

A run is one unit of an experiment's grid (organism x agent x budget x repeat x provider),
stored exactly once: `(experiment_id, unit_key)` is unique. A unit that was interrupted stays
`running`; resuming deletes its rows and runs it again (its partial transcript file is kept).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select

from agent.transcript import read_transcript

SCHEMA_VERSION = "0001"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Experiment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: dt.datetime = Field(default_factory=_now)


class Run(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("experiment_id", "unit_key", name="uq_run_unit"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    unit_key: str
    organism: str = Field(index=True)
    agent: str
    budget: int
    repeat: int
    provider: str
    provider_is_llm: bool = True
    status: str = Field(default="running", description="running, finished")
    attempt: int = 1
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

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
                session.commit()
                session.refresh(found)
            return found

    def find_experiment(self, name: str) -> Experiment | None:
        with self.session() as session:
            return session.exec(select(Experiment).where(Experiment.name == name)).first()

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

    def start_unit(self, experiment_id: int, unit_key: str, **fields: Any) -> Run | None:
        """Claim a unit: None when it is already finished; an interrupted attempt is cleared
        and the unit starts again with the next attempt number."""
        with self.session() as session:
            existing = session.exec(select(Run).where(Run.experiment_id == experiment_id,
                                                      Run.unit_key == unit_key)).first()
            attempt = 1
            if existing is not None:
                if existing.status == "finished":
                    return None
                attempt = existing.attempt + 1
                self._delete_children(session, existing.id)  # type: ignore[arg-type]
                session.delete(existing)
                session.flush()
            run = Run(experiment_id=experiment_id, unit_key=unit_key, attempt=attempt, **fields)
            session.add(run)
            session.commit()
            session.refresh(run)
            return run

    def set_transcript(self, run_id: int, path: Path) -> None:
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is not None:
                run.transcript_path = str(path)
                session.add(run)
                session.commit()

    def finish_unit(self, run_id: int, outcome: dict[str, Any], grade: Grade | None) -> Run:
        """Store the outcome, the transcript's messages, tool calls and usage, and the grade,
        in one transaction, and mark the run finished."""
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise KeyError(run_id)
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

    def add_grade(self, run_id: int, grade: Grade) -> None:
        """Store a grade of a finished run (grading is its own step, so it can be redone)."""
        with self.session() as session:
            grade.run_id = run_id
            session.add(grade)
            session.commit()

    # -- details ------------------------------------------------------------------------------

    def messages(self, run_id: int) -> list[Message]:
        with self.session() as session:
            return list(session.exec(select(Message).where(Message.run_id == run_id).order_by(Message.seq)))

    def tool_calls(self, run_id: int) -> list[ToolCallRecord]:
        with self.session() as session:
            return list(session.exec(select(ToolCallRecord).where(ToolCallRecord.run_id == run_id)
                                     .order_by(ToolCallRecord.seq)))

    def usage(self, run_id: int) -> list[Usage]:
        with self.session() as session:
            return list(session.exec(select(Usage).where(Usage.run_id == run_id).order_by(Usage.seq)))

    def grades(self, run_id: int) -> list[Grade]:
        with self.session() as session:
            return list(session.exec(select(Grade).where(Grade.run_id == run_id)))

    @staticmethod
    def _delete_children(session: Session, run_id: int) -> None:
        for table in (Message, ToolCallRecord, Usage, Grade):
            for row in session.exec(select(table).where(table.run_id == run_id)):  # type: ignore[attr-defined]
                session.delete(row)

    @staticmethod
    def _import_transcript(session: Session, run_id: int, path: Path) -> None:
        for event in read_transcript(path):
            data = event.data
            if event.kind == "message":
                session.add(Message(run_id=run_id, seq=event.seq, role=data.get("role", ""),
                                    content=data.get("content") or "",
                                    tool_calls=data.get("tool_calls") or []))
            elif event.kind == "tool_call":
                session.add(ToolCallRecord(
                    run_id=run_id, seq=event.seq, call_id=data.get("id", ""), name=data.get("name", ""),
                    arguments=data.get("arguments", ""), ok=bool(data.get("ok")),
                    result=data.get("result"), error=data.get("error"),
                    interactions=data.get("interactions", 0), latency_s=data.get("latency_s", 0.0),
                    interactions_left=data.get("interactions_left")))
            elif event.kind == "llm_call":
                usage = data.get("usage", {})
                session.add(Usage(run_id=run_id, seq=event.seq, model=data.get("model", ""),
                                  input_tokens=usage.get("input_tokens", 0),
                                  output_tokens=usage.get("output_tokens", 0),
                                  cost_usd=data.get("cost_usd"), latency_s=data.get("latency_s", 0.0),
                                  attempts=data.get("attempts", 1)))


def open_store(url: str | None = None) -> Store:
    """Open (creating or upgrading the schema with the migrations) the results database."""
    from evals.migrations import upgrade

    url = url or default_database_url()
    engine = create_engine(url, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {})
    upgrade(engine)
    return Store(engine)
