"""`adl eval export`: an experiment as Inspect eval logs (read back with inspect_ai's own API and
dataframes) and as CSV / JSON lines, equal to the store run by run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import select

from evals.export import run_rows
from evals.runs import EvalConfig, grid, run_experiment
from evals.store import Grade, Store, open_store

inspect_log = pytest.importorskip("inspect_ai.log")
pytestmark = pytest.mark.slow
ORGANISMS = ("cake_bake", "taboo_gold")
EXPERIMENT = "export-me"


@pytest.fixture(scope="module")
def experiment(tiny_config: Any, tiny_home: Path, tiny_service: Any,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Path]:
    """Two organisms (the tiny pair labelled as two registry organisms, so their ground truth
    grades the runs) x two agents x budgets 0 and 2, heuristic policy, in process; one run's
    grade removed (an ungraded run)."""
    folder = tmp_path_factory.mktemp("export")
    configs = {}
    for organism in ORGANISMS:
        configs[organism] = folder / f"{organism}.yaml"
        configs[organism].write_text(yaml.safe_dump(
            tiny_config.model_copy(update={"label": organism}).model_dump(mode="json")))
    config = EvalConfig.model_validate({
        "name": EXPERIMENT, "organisms": list(ORGANISMS), "agents": ["adl", "blackbox"],
        "budgets": [0, 2], "providers": ["heuristic"], "grader": "offline",
        "ask_models": {"max_new_tokens": 8}, "worker_configs": configs})
    store = open_store(f"sqlite:///{folder / 'adl.db'}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADL_HOME", str(tiny_home / "cache"))
        summary = run_experiment(config, folder, store, show_progress=False)
    assert summary.failed == [] and summary.ran == len(grid(config)) == 8
    with store.session() as session:  # one run left ungraded
        grade = session.exec(select(Grade).order_by(Grade.run_id)).first()
        assert grade is not None
        session.delete(grade)
        session.commit()
    return store, folder


def _runs_by_unit(store: Store) -> dict[str, Any]:
    found = store.find_experiment(EXPERIMENT)
    assert found is not None
    return {run.unit_key: run for run in store.runs(found.id)}  # type: ignore[arg-type]


def test_inspect_logs_read_back_equal_to_the_store(experiment: tuple[Store, Path], tmp_path: Path) -> None:
    from inspect_ai.analysis import samples_df

    from evals.export import export_experiment

    store, _ = experiment
    paths = export_experiment(store, EXPERIMENT, "inspect", tmp_path)
    assert len(paths) == 4  # one log per (agent, budget, provider)
    runs = _runs_by_unit(store)
    seen: set[str] = set()
    ungraded = 0
    for path in paths:
        log = inspect_log.read_eval_log(str(path))
        assert log.status == "success" and log.samples is not None
        agent, budget = log.eval.task_args["agent"], log.eval.task_args["budget"]
        group = [r for r in runs.values() if (r.agent, r.budget) == (agent, budget)]
        assert len(log.samples) == len(group) == 2
        grades = []
        for sample in log.samples:
            run = runs[sample.metadata["unit_key"]]
            seen.add(run.unit_key)
            assert (sample.id, sample.epoch) == (run.organism, run.repeat + 1)
            assert sample.metadata["end_reason"] == run.end_reason
            assert sample.metadata["interactions_used"] == run.interactions_used
            assert sample.metadata["organism_type"] is not None and sample.target
            stored = store.grades(run.id)
            if stored:
                assert sample.scores is not None
                score = sample.scores["grade"]
                assert score.value == pytest.approx(stored[0].score)
                assert score.explanation == stored[0].reasoning
                assert score.answer == run.hypothesis
                grades.append(stored[0].score)
            else:
                assert not sample.scores
                ungraded += 1
            calls = store.tool_calls(run.id)
            tool_messages = [m for m in sample.messages if m.role == "tool"]
            requested = [c for m in sample.messages if m.role == "assistant" for c in (m.tool_calls or [])]
            assert len(tool_messages) == len(calls) == sample.metadata["tool_calls"]
            assert [m.function for m in tool_messages] == [c.name for c in calls]
            assert len(requested) == len(calls)
            assert [m.role for m in sample.messages[:2]] == ["system", "user"]
            assert sum(u.output_tokens for u in sample.model_usage.values()) == run.output_tokens
        assert log.results is not None
        if grades:
            metrics = log.results.scores[0].metrics
            assert metrics["mean"].value == pytest.approx(sum(grades) / len(grades))
            assert metrics["success_rate"].value == pytest.approx(
                sum(g >= 4 for g in grades) / len(grades))
    assert seen == set(runs) and ungraded == 1
    frame = samples_df(str(tmp_path), quiet=True)
    assert len(frame) == len(runs)

    # Export again: the logs are replaced whole, nothing else is left in the folder.
    again = export_experiment(store, EXPERIMENT, "inspect", tmp_path)
    assert sorted(again) == sorted(paths) and sorted(tmp_path.iterdir()) == sorted(paths)


def test_csv_and_jsonl_have_one_row_per_run(experiment: tuple[Store, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from evals.cli import app

    store, folder = experiment
    monkeypatch.setenv("ADL_RESULTS", str(tmp_path))
    database = f"sqlite:///{folder / 'adl.db'}"
    for export_format in ("csv", "jsonl"):
        result = CliRunner().invoke(app, ["eval", "export", EXPERIMENT, "--format", export_format,
                                          "--database", database])
        assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "exports" / EXPERIMENT / "csv" / f"{EXPERIMENT}_runs.csv")
    lines = (tmp_path / "exports" / EXPERIMENT / "jsonl" / f"{EXPERIMENT}_runs.jsonl").read_text().splitlines()
    rows = run_rows(store, EXPERIMENT)
    assert len(frame) == len(lines) == len(rows) == 8
    assert sorted(frame["unit_key"]) == sorted(r.unit_key for r in rows)
    assert frame["grade"].isna().sum() == 1 and [json.loads(x)["grade"] for x in lines].count(None) == 1
    assert list(frame["tool_calls"]) == [len(store.tool_calls(r.run_id)) for r in rows]


def test_export_errors_are_clear(experiment: tuple[Store, Path]) -> None:
    from typer.testing import CliRunner

    from evals.cli import app

    _, folder = experiment
    database = f"sqlite:///{folder / 'adl.db'}"
    result = CliRunner().invoke(app, ["eval", "export", "no-such", "--database", database])
    assert result.exit_code != 0 and "No experiment 'no-such'" in str(result.exception)
    result = CliRunner().invoke(app, ["eval", "export", EXPERIMENT, "--format", "xml",
                                      "--database", database])
    assert result.exit_code != 0 and "Unknown export format 'xml'" in str(result.exception)
