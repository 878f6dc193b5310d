"""The results store: Alembic migrations match the models, and the store's run bookkeeping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, create_engine, select

from agent.transcript import TranscriptWriter
from evals import store
from evals.migrations import alembic_config, current_revision, downgrade, upgrade
from evals.store import Experiment, Grade, Run, open_store

TABLES = {"experiment", "run", "message", "tool_call", "usage", "grade"}
UNIT = {"organism": "cake_baker", "agent": "adl", "budget": 5, "repeat": 0, "provider": "fake"}


def _url(tmp_path: Path, name: str = "adl.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_one_head_and_it_is_the_schema_version():
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [store.SCHEMA_VERSION]


def test_upgrade_empty_database_matches_the_models(tmp_path):
    engine = create_engine(_url(tmp_path))
    assert current_revision(engine) is None
    upgrade(engine)
    assert _tables(engine) == TABLES
    assert _schema_diff(engine) == []
    inspector = sa.inspect(engine)
    assert {"name": "uq_run_unit", "column_names": ["experiment_id", "unit_key"]}.items() <= (
        inspector.get_unique_constraints("run")[0].items())
    assert {fk["referred_table"] for fk in inspector.get_foreign_keys("grade")} == {"run"}


def test_open_store_is_at_schema_version_and_upgrading_again_is_a_no_op(tmp_path):
    url = _url(tmp_path)
    first = open_store(url)
    assert current_revision(first.engine) == "0001" == store.SCHEMA_VERSION
    with Session(first.engine) as session:
        session.add(Experiment(name="kept", config={"a": 1}, created_at=dt.datetime.now(dt.UTC)))
        session.commit()

    upgrade(first.engine)
    again = open_store(url)
    assert current_revision(again.engine) == store.SCHEMA_VERSION
    assert _schema_diff(again.engine) == []
    with Session(again.engine) as session:
        kept = session.exec(select(Experiment)).one()
    assert (kept.name, kept.config) == ("kept", {"a": 1})


def test_downgrade_to_base_and_upgrade_again(tmp_path):
    engine = create_engine(_url(tmp_path))
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    assert _tables(engine) == TABLES

    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert _tables(engine) == set()

    upgrade(engine)
    assert current_revision(engine) == store.SCHEMA_VERSION
    assert _schema_diff(engine) == []


def _write_transcript(path: Path) -> None:
    with TranscriptWriter(path) as writer:
        writer.write("run_started", organism="cake_baker")
        writer.write("message", role="user", content="What changed?")
        writer.write("llm_call", model="fake-model", usage={"input_tokens": 12, "output_tokens": 3},
                     cost_usd=0.25, latency_s=0.5, attempts=2)
        writer.write("message", role="assistant", content="",
                     tool_calls=[{"id": "c1", "name": "probe", "arguments": "{\"q\": \"hi\"}"}])
        writer.write("tool_call", id="c1", name="probe", arguments="{\"q\": \"hi\"}", ok=True,
                     result={"text": "cake"}, error=None, interactions=1, latency_s=0.1,
                     interactions_left=4)
        writer.write("run_ended", end_reason="answered")


def test_store_round_trip(tmp_path):
    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp", {"budget": [5]})
    assert db.experiment("exp").id == experiment.id
    assert db.find_experiment("exp").config == {"budget": [5]}

    first = db.start_unit(experiment.id, "u1", **UNIT)
    assert first is not None and first.attempt == 1 and first.status == "running"
    # Interrupted (still running): claiming it again replaces the row with the next attempt.
    second = db.start_unit(experiment.id, "u1", **UNIT)
    assert second is not None and second.attempt == 2
    assert [run.id for run in db.runs(experiment.id)] == [second.id]

    transcript = tmp_path / "transcripts" / "u1.jsonl"
    _write_transcript(transcript)
    db.set_transcript(second.id, transcript)
    outcome = {"end_reason": "answered", "detail": None, "hypothesis": "It bakes cakes.",
               "llm_calls": 1, "interactions_used": 1, "input_tokens": 12, "output_tokens": 3,
               "cost_usd": 0.25, "wall_time_s": 1.5}
    finished = db.finish_unit(second.id, outcome,
                              Grade(run_id=0, grader="judge", score=4.5, reasoning="close",
                                    details={"scores": [4, 5]}))
    assert finished.status == "finished" and finished.finished_at is not None
    assert (finished.hypothesis, finished.input_tokens, finished.cost_usd) == (
        "It bakes cakes.", 12, 0.25)
    assert db.runs(experiment.id, status="finished")[0].id == second.id

    messages = db.messages(second.id)
    assert [(m.role, m.content) for m in messages] == [("user", "What changed?"), ("assistant", "")]
    assert messages[1].tool_calls[0]["name"] == "probe"
    (call,) = db.tool_calls(second.id)
    assert (call.call_id, call.name, call.ok, call.result, call.interactions_left) == (
        "c1", "probe", True, {"text": "cake"}, 4)
    (usage,) = db.usage(second.id)
    assert (usage.model, usage.input_tokens, usage.output_tokens, usage.cost_usd, usage.attempts) == (
        "fake-model", 12, 3, 0.25, 2)
    (grade,) = db.grades(second.id)
    assert (grade.run_id, grade.grader, grade.score, grade.details) == (
        second.id, "judge", 4.5, {"scores": [4, 5]})

    # A finished unit is skipped; the store keeps one row per unit.
    assert db.start_unit(experiment.id, "u1", **UNIT) is None
    assert len(db.runs(experiment.id)) == 1
    with Session(db.engine) as session, pytest.raises(IntegrityError):
        session.add(Run(experiment_id=experiment.id, unit_key="u1", **UNIT))
        session.commit()
