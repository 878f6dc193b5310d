"""Evaluation grids: kill mid-grid and resume, store exactly once, compare, show, configs."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.transcript import read_transcript
from evals.cli.experiments import compare_and_report
from evals.compare import bootstrap_interval, compare_experiment
from evals.runs import (
    EvalConfig,
    ExperimentNameError,
    Unit,
    check_experiment_name,
    grid,
    load_eval_config,
    run_experiment,
)
from evals.store import open_store
from tools.errors import AdlError, AdlInputError


@pytest.fixture(scope="module")
def worker_url(cake_worker_url: str) -> str:
    """The session's tiny worker served as cake_bake (tests/conftest.py)."""
    return cake_worker_url


def _write_config(folder: Path, url: str, name: str = "grid") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "organisms": ["cake_bake"], "agents": ["adl", "blackbox"],
        "budgets": [0, 2], "repeats": 3, "providers": ["heuristic"], "grader": "offline",
        "workers": {"cake_bake": url}, "concurrency": 1, "ask_models": {"max_new_tokens": 8},
    }))
    return path


def _eval_run(config: Path, results: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "ADL_RESULTS": str(results)}
    env.pop("ADL_DATABASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "evals.cli", "eval", "run", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finished(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database) as connection:
            return connection.execute("select count(*) from run where status = 'finished'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _running_with_transcript(database: Path) -> bool:
    """A unit is mid-run: its row is `running` and its transcript has events."""
    try:
        with sqlite3.connect(database) as connection:
            paths = [row[0] for row in connection.execute(
                "select transcript_path from run where status = 'running' and transcript_path is not null")]
    except sqlite3.OperationalError:
        return False
    return any(Path(p).exists() and Path(p).stat().st_size > 0 for p in paths)


def test_killed_grid_resumes_with_every_unit_stored_once(worker_url: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    config = _write_config(tmp_path, worker_url)
    database = results / "adl.db"
    first = _eval_run(config, results)
    deadline = time.monotonic() + 300
    while not (_finished(database) >= 3 and _running_with_transcript(database)):
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = _finished(database)
    assert killed_at < 12, "the grid finished before the kill: the test needs a larger grid"

    second = _eval_run(config, results)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    assert f"{killed_at} already stored" in output

    store = open_store(f"sqlite:///{database}")
    experiment = store.find_experiment("grid")
    assert experiment is not None
    runs = store.runs(experiment.id)  # type: ignore[arg-type]
    assert len(runs) == 12 and len({r.unit_key for r in runs}) == 12
    assert all(r.status == "finished" for r in runs)
    for run in runs:
        events = read_transcript(Path(run.transcript_path or ""))
        assert events[-1].kind == "run_ended"
        assert len(store.messages(run.id)) >= 3 and len(store.grades(run.id)) == 1  # type: ignore[arg-type]
        assert len(store.tool_calls(run.id)) == sum(e.kind == "tool_call" for e in events)  # type: ignore[arg-type]
    files = sorted((results / "transcripts" / "grid").glob("*.jsonl"))
    retried = [r for r in runs if r.attempt > 1]
    assert len(retried) >= 1  # the unit killed mid-run was run again
    assert len(files) == 12 + len(retried)  # the interrupted attempt's transcript was kept
    for run in retried:
        earlier = Path(run.transcript_path or "").with_name(
            Path(run.transcript_path or "").name.replace(f"attempt{run.attempt}", "attempt1"))
        assert earlier.exists() and read_transcript(earlier)[0].kind == "run_started"

    third = _eval_run(config, results)  # nothing left to do
    assert "12 already stored, 0 run now" in third.communicate(timeout=300)[0]

    comparison = compare_experiment(store, "grid")
    cell = comparison.cell("cake_bake", "adl", 2)
    assert cell is not None and cell.n == 3 and 1 <= cell.mean_grade <= 5
    assert cell.ci_low <= cell.mean_grade <= cell.ci_high and cell.cost_usd == 0.0
    assert {(d.organism, d.budget) for d in comparison.differences} >= {("cake_bake", 0), ("all", 2)}
    assert all(d.n_pairs == 3 for d in comparison.differences)

    env = {**os.environ, "ADL_RESULTS": str(results)}
    out = tmp_path / "compare"
    compared = subprocess.run([sys.executable, "-m", "evals.cli", "eval", "compare", "grid", "--out", str(out)],
                              check=True, capture_output=True, text=True, env=env)
    assert "ADL - blackbox" in compared.stdout and (out / "comparison.png").stat().st_size > 1000
    assert (out / "comparison.csv").read_text().count("\n") == len(comparison.cells) + len(comparison.differences) + 1
    shown = subprocess.run([sys.executable, "-m", "evals.cli", "eval", "show", str(runs[0].id)],
                           check=True, capture_output=True, text=True, env=env)
    assert "submit_hypothesis" in shown.stdout and "grade" in shown.stdout and "not an LLM" in shown.stdout
    exported = subprocess.run([sys.executable, "-m", "evals.cli", "eval", "show", str(runs[0].id), "--json"],
                              check=True, capture_output=True, text=True, env=env)
    data = json.loads(exported.stdout)
    assert data["run"]["unit_key"] == runs[0].unit_key and data["tool_calls"] and data["grades"]


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\norganisms: [cake_bake]\nagents: [adl, oracle]\n")
    with pytest.raises(AdlInputError, match="agents.*oracle"):
        load_eval_config(bad)
    bad.write_text("name: x\norganisms: [no_such_organism]\n")
    with pytest.raises(AdlError, match="no_such_organism"):
        load_eval_config(bad)
    bad.write_text("name: x\norganisms: [cake_bake]\nproviders: [gpt-5]\n")
    with pytest.raises(AdlError, match="Unknown provider"):
        load_eval_config(bad)
    bad.write_text("name: [x\n")
    with pytest.raises(AdlInputError, match="not valid YAML"):
        load_eval_config(bad)


def test_bootstrap_interval() -> None:
    low, high = bootstrap_interval([1, 2, 3, 4, 5])
    assert 1.5 < low < 3 < high < 4.5
    assert bootstrap_interval([3.0]) == (3.0, 3.0)


@pytest.mark.parametrize("name", ["/tmp/x", "../../x", "a/b", "..", ".hidden", "a..b", "-x", "x" * 101,
                                  "a b", "x\n"])
def test_experiment_names_cannot_leave_the_results_folder(tmp_path: Path, name: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": name, "organisms": ["cake_bake"]}))
    with pytest.raises(AdlInputError, match="name: .*is not allowed"):
        load_eval_config(bad)
    with pytest.raises(ExperimentNameError, match="is not allowed"):
        compare_and_report(open_store(f"sqlite:///{tmp_path / 'adl.db'}"), name)
    assert not (tmp_path / "x").exists()


def test_safe_experiment_names_are_accepted(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "grid-1.v2_A", "organisms": ["cake_bake"]}))
    assert load_eval_config(good).name == check_experiment_name("grid-1.v2_A") == "grid-1.v2_A"


def test_grid_lists_every_unit_once_in_order() -> None:
    config = EvalConfig(name="dupes", organisms=["cake_bake", "cake_bake"], agents=["adl", "blackbox", "adl"],
                        budgets=[5, 0, 5], repeats=1, providers=["heuristic"])
    assert [(u.budget, u.agent) for u in grid(config)] == [(5, "adl"), (5, "blackbox"), (0, "adl"),
                                                           (0, "blackbox")]


def test_unit_keys_that_differ_only_in_odd_characters_get_different_files() -> None:
    units = [Unit(organism="cake_bake", agent="adl", budget=5, repeat=0, provider=p)
             for p in ("openai:gpt-5", "openai/gpt-5", "openai_gpt-5")]
    stems = [u.file_stem for u in units]
    assert len(set(stems)) == 3 and all("/" not in s and ":" not in s for s in stems)


def test_two_runners_on_one_experiment_store_every_unit_once(worker_url: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    config = _write_config(tmp_path, worker_url, name="twice")
    spec = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**spec, "budgets": [0, 2, 2], "repeats": 1}))  # a duplicate budget
    runners = [_eval_run(config, results) for _ in range(2)]
    outputs = [runner.communicate(timeout=300)[0] for runner in runners]
    for runner, output in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, output
    ran = [int(re.search(r"(\d+) run now", output).group(1)) for output in outputs]  # type: ignore[union-attr]
    assert sum(ran) == 4, outputs  # the runners split the grid (when their runs overlapped)

    store = open_store(f"sqlite:///{results / 'adl.db'}")
    experiment = store.find_experiment("twice")
    assert experiment is not None
    runs = store.runs(experiment.id)  # type: ignore[arg-type]
    assert len(runs) == 4 and len({r.unit_key for r in runs}) == 4
    assert all(r.status == "finished" and r.attempt == 1 for r in runs)  # nothing taken over
    for run in runs:
        events = read_transcript(Path(run.transcript_path or ""))
        assert events[-1].kind == "run_ended"
        assert len(store.messages(run.id)) == sum(e.kind == "message" for e in events)  # type: ignore[arg-type]
        assert len(store.tool_calls(run.id)) == sum(e.kind == "tool_call" for e in events)  # type: ignore[arg-type]
        assert len(store.grades(run.id)) == 1  # type: ignore[arg-type]
    assert len(list((results / "transcripts" / "twice").glob("*.jsonl"))) == 4


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "evals" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    """Every example config validates (organisms, providers, the Ray section)."""
    config = load_eval_config(path)
    if config.executor == "ray":  # the GPU example: one GPU per worker, bf16 on the actor
        assert all(config.ray.worker_for(o).load_options().device == "cuda" for o in config.organisms)  # type: ignore[union-attr]


def test_the_kuberay_example_declares_the_grid_s_custom_resource() -> None:
    """docker/kuberay-cluster.yaml offers the custom resource evals/configs/ray_gpu.yaml asks for."""
    root = Path(__file__).parents[1]
    cluster = yaml.safe_load((root / "docker" / "kuberay-cluster.yaml").read_text())
    declared = [json.loads(yaml.safe_load(group["rayStartParams"]["resources"]))
                for group in cluster["spec"]["workerGroupSpecs"] if "resources" in group["rayStartParams"]]
    grid_config = load_eval_config(root / "evals" / "configs" / "ray_gpu.yaml")
    wanted = {name for worker in grid_config.ray.workers.values() for name in worker.resources}
    assert wanted <= {name for resources in declared for name in resources}


def test_eval_run_with_ray_flags_runs_the_grid_on_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--ray` runs the config on a new local cluster; `--ray-address` joins one (and implies
    --ray); without them the config's executor is used."""
    from typer.testing import CliRunner

    from evals.cli import app
    from evals.cli import experiments as cli
    from evals.runs import ExperimentSummary

    seen: list[EvalConfig] = []

    def fake_run(config: EvalConfig, *args: object, **kwargs: object) -> ExperimentSummary:
        seen.append(config)
        return ExperimentSummary(experiment=config.name, units=0, skipped=0, ran=0, failed=[])

    monkeypatch.setattr(cli, "run_experiment", fake_run)
    monkeypatch.setenv("ADL_RESULTS", str(tmp_path))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "organisms": ["cake_bake"]}))
    for flags in ([], ["--ray"], ["--ray-address", "auto"]):
        result = CliRunner().invoke(app, ["eval", "run", str(path), *flags])
        assert result.exit_code == 0, result.output
    assert [(c.executor, c.ray.address) for c in seen] == [("local", None), ("ray", None), ("ray", "auto")]


def test_a_grid_s_steering_batch_size_reaches_every_organism_worker(
        monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tiny_adapter_dir: Path) -> None:
    """`steering_max_batch_size` (a memory setting) goes into the organisms' own worker configs,
    in process and on Ray; unset, the profile's 32 stays and stored configs do not change."""
    from evals.organisms import build
    from evals.ray_executor import WorkerActor
    from evals.workers import OwnWorkerOptions, connect
    from tools.model_spec import ModelPairSpec
    from tools.worker.service import AdlService

    monkeypatch.setattr(build, "organism_pair_spec", lambda organism, **_: ModelPairSpec(
        base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)))
    started: list[int] = []
    monkeypatch.setattr(AdlService, "start", classmethod(
        lambda cls, config, **_: started.append(config.steering.max_batch_size) or "service"))

    default = EvalConfig(name="g", organisms=["cake_bake"])
    assert "steering_max_batch_size" not in default.public_dump()
    config = EvalConfig(name="g", organisms=["cake_bake"], steering_max_batch_size=1024)
    assert config.public_dump()["steering_max_batch_size"] == 1024
    with pytest.raises(ValueError, match="less than or equal to 4096"):
        EvalConfig(name="g", organisms=["cake_bake"], steering_max_batch_size=100_000)

    connect("cake_bake", None, "paper", options=config.own_worker_options())
    connect("cake_bake", None, "paper")
    import torch

    threads = torch.get_num_threads()
    try:
        WorkerActor("cake_bake", None, "paper", "full", 1,  # sets torch's threads
                    OwnWorkerOptions(steering_max_batch_size=1024))
    finally:
        torch.set_num_threads(threads)
    assert started == [1024, 32, 1024]


def test_a_grid_s_load_options_and_backend_reach_its_in_process_workers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path,
        tiny_adapter_dir: Path) -> None:
    """`load` and `backend` (how the organisms' own workers run: a GPU, no transformer_lens) go
    from the grid's config to its in-process workers and Ray actors; unset, stored configs do
    not change; the hf-hooks backend does not ask for transformer_lens."""
    from evals import workers
    from evals.organisms import build
    from evals.ray_executor import WorkerActor
    from evals.workers import OwnWorkerOptions
    from tools.model_spec import LoadOptions, ModelPairSpec
    from tools.worker.service import AdlService

    monkeypatch.setattr(build, "organism_pair_spec", lambda organism, **_: ModelPairSpec(
        base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)))
    started: list[tuple[str, str, str]] = []

    def fake_start(cls: type, config: Any, **_: Any) -> Any:
        started.append((config.load.device, config.load.dtype, config.backend))
        raise RuntimeError("started")

    monkeypatch.setattr(AdlService, "start", classmethod(fake_start))
    default = EvalConfig(name="g", organisms=["cake_bake"])
    assert "load" not in default.public_dump() and "backend" not in default.public_dump()
    config = EvalConfig(name="g", organisms=["cake_bake"], agents=["adl"], budgets=[0],
                        load={"device": "cpu", "dtype": "bfloat16"}, backend="hf-hooks")
    assert config.public_dump()["load"] == {"dtype": "bfloat16", "device": "cpu", "device_map": None}
    assert config.public_dump()["backend"] == "hf-hooks"
    with pytest.raises(ValueError, match="bridge"):
        EvalConfig(name="g", organisms=["cake_bake"], backend="vllm")

    with pytest.raises(RuntimeError, match="started"):
        run_experiment(config, tmp_path, open_store(f"sqlite:///{tmp_path / 'adl.db'}"),
                       show_progress=False)
    import torch

    threads = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="started"):
            WorkerActor("cake_bake", None, "paper", "full", 1,
                        config.own_worker_options(LoadOptions()))
    finally:
        torch.set_num_threads(threads)
    assert started == [("cpu", "bfloat16", "hf-hooks"), ("cpu", "float32", "hf-hooks")]

    real_installed = workers._installed
    monkeypatch.setattr(workers, "_installed", lambda m: m != "transformer_lens" and real_installed(m))
    with pytest.raises(AdlInputError, match="transformer_lens not installed"):
        workers.connect("cake_bake", None, "paper")
    with pytest.raises(RuntimeError, match="started"):
        workers.connect("cake_bake", None, "paper", options=OwnWorkerOptions(backend="hf-hooks"))


@pytest.mark.parametrize(("end_reason", "said"), [
    ("worker_unavailable", "its worker was unavailable"), ("provider_error", "its provider failed")])
def test_a_run_whose_worker_or_provider_failed_fails_its_unit_and_runs_again(
        tmp_path: Path, end_reason: str, said: str) -> None:
    """A run ended by its worker (the first message could not be built, the worker died) or by
    its provider (after the retry policy gave up) is not the agent's result: the unit fails,
    nothing is graded, and the next run of the grid runs it again as attempt 2 (such runs used
    to be stored as finished and graded 1, and a resume skipped them)."""
    from agent.transcript import RunOutcome
    from evals.runs import GridRun

    config = EvalConfig(name="g", organisms=["cake_bake"], agents=["adl"], budgets=[0])
    store = open_store(f"sqlite:///{tmp_path / 'adl.db'}")
    experiment = store.experiment(config.name, config.public_dump())
    graded: list[str | None] = []

    class Grader:
        name = "fake"

        def grade(self, organism: Any, hypothesis: str | None) -> Any:
            graded.append(hypothesis)
            raise AssertionError("a run without an agent result was graded")

    grid_run = GridRun(config, tmp_path, store, experiment.id, Grader())  # type: ignore[arg-type]
    unit = grid(config)[0]
    counts = {"llm_calls": 0, "interactions_used": 0, "input_tokens": 0, "output_tokens": 0,
              "cost_usd": 0.0, "tool_calls": 0, "tool_errors": 0, "wall_time_s": 0.0}
    unavailable = RunOutcome(hypothesis=None, end_reason=end_reason,  # type: ignore[arg-type]
                             detail="The first message could not be built: Too many prompts",
                             **counts)
    with pytest.raises(AdlError, match=f"{said} .*Too many prompts.*left unfinished"):
        grid_run.run_unit(unit, lambda *args: unavailable)
    assert graded == [] and store.runs(experiment.id, status="finished") == []  # type: ignore[arg-type]
    attempts: list[str] = []

    def finished(unit: Any, provider: Any, path: Path, *rest: Any) -> RunOutcome:
        attempts.append(path.name)
        return RunOutcome(hypothesis=None, end_reason="no_final_answer", **counts)

    with pytest.raises(AssertionError, match="was graded"):  # the second attempt reaches the grader
        grid_run.run_unit(unit, finished)
    assert attempts == [f"{unit.file_stem}.attempt2.jsonl"]


def test_a_worker_s_notes_are_logged_where_the_grid_connects(
        worker_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A worker process's notes (a zero difference, a backend fallback, ...) reach the grid's
    log when the grid connects to it; the tiny worker has none."""
    from evals.workers import connect
    from tools.worker.client import HttpWorkerClient

    with caplog.at_level("WARNING", logger="evals.workers"):
        connect("cake_bake", worker_url, "quick")
    assert not [r for r in caplog.records if r.name == "evals.workers"]
    real_info = HttpWorkerClient.info
    monkeypatch.setattr(HttpWorkerClient, "info", lambda self: real_info(self).model_copy(
        update={"notes": ["dataset_1: the activation difference is zero at every computed block"]}))
    with caplog.at_level("WARNING", logger="evals.workers"):
        connect("cake_bake", worker_url, "quick")
    assert any("The worker of cake_bake: dataset_1: the activation difference is zero" in r.getMessage()
               for r in caplog.records)
