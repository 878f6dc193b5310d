"""The results store: Alembic migrations match the models, and the store's run bookkeeping."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, create_engine, select

from agent.providers.base import ToolCall
from agent.providers.base import Usage as TokenUsage
from agent.transcript import LlmCallData, MessageData, ToolCallData, TranscriptWriter
from evals import store
from evals.migrations import alembic_config, current_revision, downgrade, upgrade
from evals.store import Experiment, Grade, Run, open_store
from tests.transcript_fixtures import run_ended, run_started
from tools.errors import AdlInputError

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
    assert current_revision(first.engine) == "0003" == store.SCHEMA_VERSION
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
        writer.write(run_started(organism="cake_baker"))
        writer.write(MessageData(role="user", content="What changed?"))
        writer.write(LlmCallData(model="fake-model", provider="fake:fake-model",
                                 usage=TokenUsage(input_tokens=12, output_tokens=3),
                                 cost_usd=0.25, latency_s=0.5, attempts=2))
        writer.write(MessageData(role="assistant", content="", tool_calls=[
            ToolCall(id="c1", name="probe", arguments="{\"q\": \"hi\"}")]))
        writer.write(ToolCallData(id="c1", name="probe", arguments="{\"q\": \"hi\"}", ok=True,
                                  result={"text": "cake"}, error=None, interactions=1,
                                  latency_s=0.1, interactions_left=4))
        writer.write(run_ended(hypothesis="It bakes cakes."))


def test_store_round_trip(tmp_path):
    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp", {"budget": [5]})
    assert db.experiment("exp").id == experiment.id
    assert db.find_experiment("exp").config == {"budget": [5]}

    first = db.start_unit(experiment.id, "u1", **UNIT)
    assert first is not None and first.attempt == 1 and first.status == "running"
    assert db.start_unit(experiment.id, "u1", **UNIT) is None  # held by this runner
    # Interrupted (let go while still running): claiming it again replaces the row with the
    # next attempt, under a new id.
    db.release(first.id)
    second = db.start_unit(experiment.id, "u1", **UNIT)
    assert second is not None and second.attempt == 2 and second.id > first.id
    assert [run.id for run in db.runs(experiment.id)] == [second.id]
    with pytest.raises(store.RunTakenOverError):
        db.finish_unit(first.id, {}, None)

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
    # A second grade by the same grader (two runners grading one run) is not stored twice.
    assert not db.add_grade(second.id, Grade(run_id=0, grader="judge", score=1.0))
    assert db.add_grade(second.id, Grade(run_id=0, grader="other", score=2.0))
    assert sorted((g.grader, g.score) for g in db.grades(second.id)) == [("judge", 4.5), ("other", 2.0)]

    # A finished unit is skipped; the store keeps one row per unit.
    assert db.start_unit(experiment.id, "u1", **UNIT) is None
    assert len(db.runs(experiment.id)) == 1
    with Session(db.engine) as session, pytest.raises(IntegrityError):
        session.add(Run(experiment_id=experiment.id, unit_key="u1", **UNIT))
        session.commit()


_CLAIMER = """
import sys
from evals.store import open_store, RunTakenOverError
db = open_store(sys.argv[1])
experiment = db.experiment("exp")
run = db.start_unit(experiment.id, "u1", organism="cake_baker", agent="adl", budget=5, repeat=0,
                    provider="fake")
print(run.id, flush=True)
sys.stdin.readline()  # the test says when to finish
try:
    db.finish_unit(run.id, {"hypothesis": "mine"}, None)
    print("finished", flush=True)
except RunTakenOverError as exc:
    print("refused:", exc, flush=True)
"""


def _claimer(url: str) -> tuple[subprocess.Popen[str], int]:
    """Another process that claims unit u1 of experiment exp and waits to finish it."""
    process = subprocess.Popen([sys.executable, "-c", _CLAIMER, url], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _set_heartbeat(db: store.Store, run_id: int, moment: dt.datetime) -> None:
    with db.session() as session:
        session.exec(sa.update(Run).where(Run.id == run_id).values(heartbeat_at=moment))  # type: ignore[arg-type]
        session.commit()


def test_a_live_runners_unit_is_left_alone_and_a_dead_ones_taken_over(tmp_path):
    url = _url(tmp_path)
    db = open_store(url)
    experiment = db.experiment("exp")
    other, run_id = _claimer(url)
    try:
        assert db.start_unit(experiment.id, "u1", **UNIT) is None  # its owner is alive
        (run,) = db.runs(experiment.id)
        assert (run.id, run.owner_pid, run.status) == (run_id, other.pid, "running")
        assert run.attempt_id and run.owner_host and run.heartbeat_at is not None
    finally:
        other.kill()
        other.wait()
    taken = db.start_unit(experiment.id, "u1", **UNIT)  # its owner died: taken over at once
    assert taken is not None and taken.attempt == 2 and taken.id > run_id
    assert [r.id for r in db.runs(experiment.id)] == [taken.id]


def test_a_stale_run_is_taken_over_and_its_runner_cannot_store_its_result(tmp_path):
    url = _url(tmp_path)
    db = open_store(url)
    experiment = db.experiment("exp")
    other, run_id = _claimer(url)
    try:
        _set_heartbeat(db, run_id, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=store.STALE_AFTER_S + 1))
        taken = db.start_unit(experiment.id, "u1", **UNIT)  # alive, but its heartbeat is stale
        assert taken is not None and taken.attempt == 2 and taken.id > run_id
        assert other.communicate("finish\n", timeout=60)[0].startswith("refused: Run")
    finally:
        other.kill()
    transcript = tmp_path / "u1.jsonl"
    _write_transcript(transcript)
    db.set_transcript(taken.id, transcript)
    finished = db.finish_unit(taken.id, {"hypothesis": "ours"}, None)
    assert (finished.hypothesis, finished.attempt, len(db.messages(taken.id))) == ("ours", 2, 2)
    (run,) = db.runs(experiment.id)
    assert run.id == taken.id and run.status == "finished"


def test_runs_on_another_host_are_judged_by_their_heartbeat(tmp_path):
    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp")
    run = db.start_unit(experiment.id, "u1", **UNIT)
    assert run is not None
    with db.session() as session:  # pretend another machine runs it
        session.exec(sa.update(Run).where(Run.id == run.id).values(owner_host="elsewhere", owner_pid=1))  # type: ignore[arg-type]
        session.commit()
    assert db.start_unit(experiment.id, "u1", **UNIT) is None
    _set_heartbeat(db, run.id, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=store.STALE_AFTER_S + 1))
    taken = db.start_unit(experiment.id, "u1", **UNIT)
    assert taken is not None and taken.id > run.id
    with pytest.raises(store.RunTakenOverError):
        db.finish_unit(run.id, {}, None)


def test_the_heartbeat_is_renewed_while_a_run_is_held(tmp_path):
    db = store.Store(open_store(_url(tmp_path)).engine, heartbeat_s=0.05)
    experiment = db.experiment("exp")
    run = db.start_unit(experiment.id, "u1", **UNIT)
    assert run is not None and run.heartbeat_at is not None
    first = run.heartbeat_at
    deadline = time.monotonic() + 10
    while db.run(run.id).heartbeat_at == first:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    db.release(run.id)
    released = db.run(run.id)
    assert released is not None and not db.is_live(released)


def test_upgrade_keeps_runs_and_ids_are_never_reused(tmp_path):
    engine = create_engine(_url(tmp_path))
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(sa.text("insert into experiment (id, name, config, created_at) "
                             "values (1, 'exp', '{}', '2026-01-01 00:00:00')"))
        conn.execute(sa.text(
            "insert into run (experiment_id, unit_key, organism, agent, budget, repeat, provider, "
            "provider_is_llm, status, attempt, llm_calls, interactions_used, input_tokens, "
            "output_tokens, started_at) values (1, 'u1', 'cake_baker', 'adl', 5, 0, 'fake', 1, "
            "'running', 1, 0, 0, 0, 0, '2026-01-01 00:00:00')"))
    db = open_store(_url(tmp_path))
    assert current_revision(db.engine) == store.SCHEMA_VERSION and _schema_diff(db.engine) == []
    with db.engine.connect() as conn:
        assert "AUTOINCREMENT" in conn.execute(sa.text("select sql from sqlite_master where name = 'run'")).scalar()
    (old,) = db.runs(1)
    assert old.attempt_id is None and not db.is_live(old)  # written before owners: stale
    taken = db.start_unit(1, "u1", **UNIT)  # deletes the highest id ...
    assert taken is not None and taken.attempt == 2 and taken.id > old.id  # ... and does not reuse it


def _graded_run(db: store.Store, experiment_id: int, key: str, organism: str, agent: str,
                score: float, is_control: bool | None) -> None:
    run = db.start_unit(experiment_id, key, organism=organism, organism_is_control=is_control,
                        agent=agent, budget=0, repeat=0, provider="fake")
    assert run is not None and run.id is not None
    db.finish_unit(run.id, {"hypothesis": "h"}, Grade(run_id=run.id, grader="g", score=score))
    db.release(run.id)


def test_compare_pools_no_control_and_names_organisms_it_cannot_resolve(tmp_path):
    """A run records whether its organism is a control: compare keeps a control out of "all"
    even when the registry does not know it (defined in an --organisms folder); a run written
    before that column (NULL) whose organism the registry lacks is pooled and named."""
    from evals.compare import ALL_ORGANISMS, compare_experiment

    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp")
    assert experiment.id is not None
    for agent, score in (("adl", 4.0), ("blackbox", 2.0)):
        _graded_run(db, experiment.id, f"a-{agent}", "cake_bake", agent, score, False)
        _graded_run(db, experiment.id, f"c-{agent}", "my_control_elsewhere", agent, 1.0, True)
        _graded_run(db, experiment.id, f"l-{agent}", "legacy_unknown", agent, 3.0, None)
    comparison = compare_experiment(db, "exp")
    assert comparison.controls == ["my_control_elsewhere"]
    assert comparison.unresolved_organisms == ["legacy_unknown"]
    pooled = comparison.cell(ALL_ORGANISMS, "adl", 0)
    assert pooled is not None and pooled.n == 2 and pooled.mean_grade == 3.5  # cake_bake + legacy


class _LengthGrader:
    """A grader whose grade is known: 1 + the hypothesis's length, capped at 5."""
    name = "length-v2"

    def grade(self, organism, hypothesis):
        from evals.grading import GradeResult

        return GradeResult(grader=self.name, score=min(5.0, 1.0 + len(hypothesis or "")),
                           reasoning="by length")


def test_regrade_adds_a_grade_per_run_and_compare_reads_the_newest_or_the_named(tmp_path):
    """`adl eval regrade` grades stored hypotheses again without re-running agents: the old
    grades stay, a second regrade grades nothing, a run it cannot grade is reported, and
    compare uses the newest grade unless told which grader."""
    from evals.compare import compare_experiment
    from evals.runs import regrade_experiment

    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp")
    assert experiment.id is not None
    for agent, score in (("adl", 4.0), ("blackbox", 2.0)):
        _graded_run(db, experiment.id, f"a-{agent}", "cake_bake", agent, score, False)
    _graded_run(db, experiment.id, "u-adl", "not_in_the_registry", "adl", 3.0, False)
    unfinished = db.start_unit(experiment.id, "running", organism="cake_bake", organism_is_control=False,
                               agent="adl", budget=5, repeat=0, provider="fake")
    assert unfinished is not None

    summary = regrade_experiment(db, "exp", _LengthGrader())
    assert (summary.graded, summary.already, summary.not_graded) == (2, 0, 2)
    assert summary.unknown_organisms == ["not_in_the_registry"] and not summary.failed
    again = regrade_experiment(db, "exp", _LengthGrader())
    assert (again.graded, again.already) == (0, 2)

    newest = compare_experiment(db, "exp")
    cell = newest.cell("cake_bake", "adl", 0)
    assert cell is not None and cell.mean_grade == 2.0  # 1 + len("h"), the regrade
    assert newest.grader == "g, length-v2"  # the unregradable run keeps its old grade: both named
    old = compare_experiment(db, "exp", grader="g")
    cell = old.cell("cake_bake", "adl", 0)
    assert cell is not None and cell.mean_grade == 4.0 and old.grader == "g"
    named = compare_experiment(db, "exp", grader="length-v2")
    assert named.ungraded_runs == 1  # the run the new grader could not grade
    with pytest.raises(AdlInputError, match="its graders: g, length-v2"):
        compare_experiment(db, "exp", grader="length-v3")  # a typo is an error, not "ungraded"
    assert [g.grader for g in db.grades(1)] == ["g", "length-v2"]  # oldest first
    assert db.current_grade(1).grader == "length-v2" and db.current_grade(1, "g").score == 4.0  # type: ignore[union-attr]
    from evals.export import run_rows

    assert [r.grade for r in run_rows(db, "exp")][:2] == [2.0, 2.0]  # export reads what compare reads
    assert [r.grade for r in run_rows(db, "exp", "g")][:2] == [4.0, 2.0]
    with pytest.raises(AdlInputError, match="No experiment 'missing'"):
        regrade_experiment(db, "missing", _LengthGrader())


def test_a_grader_named_without_its_prompt_version_is_found_when_one_version_graded(tmp_path):
    """`--grader llm:openai:gpt-5` picks `llm:openai:gpt-5@prompts-…` when that is the only
    version that graded the experiment; with two versions it names both instead of guessing."""
    from evals.compare import compare_experiment

    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp")
    assert experiment.id is not None
    old_prompts = "llm:openai:gpt-5@prompts-aaaaaaaaaaaa"
    for agent in ("adl", "blackbox"):
        run = db.start_unit(experiment.id, agent, organism="cake_bake", organism_is_control=False,
                            agent=agent, budget=0, repeat=0, provider="fake")
        assert run is not None and run.id is not None
        db.finish_unit(run.id, {"hypothesis": "h"}, Grade(run_id=run.id, grader=old_prompts, score=3.0))
        db.release(run.id)
    assert db.require_grader("exp", "llm:openai:gpt-5") == old_prompts
    assert compare_experiment(db, "exp", grader="llm:openai:gpt-5").grader == old_prompts
    db.add_grade(1, Grade(run_id=1, grader="llm:openai:gpt-5@prompts-bbbbbbbbbbbb", score=4.0))
    with pytest.raises(AdlInputError, match="several graders.*aaaaaaaaaaaa, .*bbbbbbbbbbbb"):
        compare_experiment(db, "exp", grader="llm:openai:gpt-5")
    with pytest.raises(AdlInputError, match="No run of 'exp' was graded by 'llm:openai'"):
        db.require_grader("exp", "llm:openai")  # a prefix short of the version is not a match


class _DeadProviderGrader:
    """A grader whose provider is gone: every grade fails."""
    name = "dead-llm"
    calls = 0

    def grade(self, organism, hypothesis):
        from evals.grading import GradingError

        self.calls += 1
        raise GradingError("provider unavailable (key=sk-secret-value-0123)")


def test_regrade_stops_after_failures_in_a_row_and_resumes(tmp_path, monkeypatch):
    """A dead provider does not fail every run one slow call at a time: the regrade stops after
    MAX_CONSECUTIVE_GRADING_FAILURES in a row, and a second regrade goes on from there."""
    from evals import runs

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-0123")
    db = open_store(_url(tmp_path))
    experiment = db.experiment("exp")
    assert experiment.id is not None
    for i in range(5):
        _graded_run(db, experiment.id, f"u{i}", "cake_bake", "adl", 3.0, False)
    dead = _DeadProviderGrader()
    summary = runs.regrade_experiment(db, "exp", dead)
    assert summary.stopped and dead.calls == runs.MAX_CONSECUTIVE_GRADING_FAILURES
    assert len(summary.failed) == dead.calls and not any("sk-secret" in f for f in summary.failed)
    later = runs.regrade_experiment(db, "exp", _LengthGrader())
    assert later.graded == 5 and not later.stopped
