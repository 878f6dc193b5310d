"""Evaluation grids on Ray: a two-node cluster on loopback (Ray's own `Cluster` utility), one
worker actor per node placed by custom resources, a worker actor killed mid-run, and the same
grid in process and on Ray giving identical grades."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.transcript import RunOutcome, ToolCallData, read_transcript
from evals.runs import EvalConfig, ExperimentSummary, grid, run_experiment
from evals.store import Store, open_store
from tests.fake_llm_server import FakeLLMServer, FakeReply, RecordedRequest
from tools.errors import AdlInputError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
ORGANISMS = ("cake_bake", "taboo_gold")


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A head and a worker node of one CPU each on this machine; node id -> custom resource."""
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False})
    second = nodes.add_node(num_cpus=1, resources={"node_b": 1})
    ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False)
    try:
        yield {nodes.head_node.node_id: "node_a", second.node_id: "node_b"}
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def worker_configs(tiny_config: Any, tiny_home: Path, tiny_service: Any,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Worker config YAMLs of the tiny pair labelled as two registry organisms (their ground
    truth grades the runs); the in-process tiny service filled the ADL cache first."""
    folder = tmp_path_factory.mktemp("ray-workers")
    paths = {}
    for organism in ORGANISMS:
        paths[organism] = folder / f"{organism}.yaml"
        config = tiny_config.model_copy(update={"label": organism})
        paths[organism].write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return paths


@pytest.fixture()
def tiny_cache(tiny_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actors (and the in-process workers) use the tiny service's cache."""
    monkeypatch.setenv("ADL_HOME", str(tiny_home / "cache"))


def _config(name: str, worker_configs: dict[str, Path], **fields: Any) -> EvalConfig:
    return EvalConfig.model_validate({
        "name": name, "organisms": list(ORGANISMS), "agents": ["adl", "blackbox"],
        "budgets": [0, 2], "providers": ["heuristic"], "grader": "offline", "concurrency": 2,
        "ask_models": {"max_new_tokens": 8}, "worker_configs": worker_configs,
        "executor": "ray", "ray": {"workers": {"cake_bake": {"resources": {"node_a": 1}},
                                               "taboo_gold": {"resources": {"node_b": 1}}}},
        **fields})


def _grades(store: Store, experiment: str) -> dict[str, float]:
    found = store.find_experiment(experiment)
    assert found is not None
    return {run.unit_key: store.grades(run.id)[0].score  # type: ignore[arg-type]
            for run in store.runs(found.id)}  # type: ignore[arg-type]


def test_a_grid_runs_one_worker_actor_per_node_and_stores_every_unit_once(
        cluster: dict[str, str], worker_configs: dict[str, Path], tiny_cache: None,
        tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'adl.db'}")
    config = _config("on-ray", worker_configs)
    summary = run_experiment(config, tmp_path, store, show_progress=False)
    assert summary.failed == [] and summary.ran == len(grid(config)) == 8
    placed = {p.organism: cluster[p.node_id] for p in summary.placements}
    assert placed == {"cake_bake": "node_a", "taboo_gold": "node_b"}
    assert all(p.threads == 1 for p in summary.placements)  # torch uses the actor's CPU share
    found = store.find_experiment("on-ray")
    runs = store.runs(found.id)  # type: ignore[arg-type, union-attr]
    assert sorted(r.unit_key for r in runs) == sorted(u.key for u in grid(config))
    assert all(r.status == "finished" and r.attempt == 1 for r in runs)
    for run in runs:  # the driver wrote each transcript; the store imported it
        assert Path(run.transcript_path or "").parent == tmp_path / "transcripts" / "on-ray"
        assert isinstance(read_transcript(Path(run.transcript_path or ""))[-1].data, RunOutcome)
        assert store.messages(run.id)  # type: ignore[arg-type]

    # Run again: every unit is stored, nothing runs (and no actor starts).
    again = run_experiment(config, tmp_path, store, show_progress=False)
    assert (again.skipped, again.ran, again.placements) == (8, 0, [])

    # The same grid in process gives the same grades, unit by unit (deterministic policy).
    local = config.model_copy(update={"name": "in-process", "executor": "local"})
    assert run_experiment(local, tmp_path, store, show_progress=False).failed == []
    assert _grades(store, "in-process") == _grades(store, "on-ray")


def test_a_worker_actor_killed_mid_run_is_restarted_and_the_unit_retried(
        cluster: dict[str, str], worker_configs: dict[str, Path], tiny_cache: None,
        tmp_path: Path) -> None:
    """The agent (a scripted LLM) waits inside its first turn while the test kills the worker
    actor and waits for its restart; its next tool call finds a restarted worker, the run ends
    `worker_unavailable`, and the driver runs the unit again as attempt 2."""
    in_first_turn, restarted = threading.Event(), threading.Event()

    def agent(request: RecordedRequest) -> FakeReply:
        turn = sum(1 for m in request.body["messages"] if m["role"] == "assistant")
        if turn == 0:
            if not in_first_turn.is_set():
                in_first_turn.set()
                assert restarted.wait(600)
            return FakeReply(tool_calls=[("r", "get_token_readouts", '{"k": 5, "method": "logit_lens"}')])
        return FakeReply(tool_calls=[("s", "submit_hypothesis", '{"description": "cakes"}')])

    with FakeLLMServer() as server:
        server.responders["openai"] = agent
        store = open_store(f"sqlite:///{tmp_path / 'adl.db'}")
        config = _config("killed", worker_configs, organisms=["cake_bake"], agents=["adl"],
                         budgets=[2], repeats=2, concurrency=1,
                         providers=[f"openai-compatible:{server.openai_url}:fake"])
        result: dict[str, ExperimentSummary] = {}
        driver = threading.Thread(target=lambda: result.update(
            summary=run_experiment(config, tmp_path, store, show_progress=False)))
        driver.start()
        assert in_first_turn.wait(300)
        actor = _named_actor("adl-worker-killed-cake_bake")
        first_pid = ray.get(actor.placement.remote()).pid
        ray.kill(actor, no_restart=False)
        deadline = time.monotonic() + 300
        while _pid(actor) in (first_pid, None):  # calls wait while it restarts
            assert time.monotonic() < deadline
            time.sleep(0.2)
        restarted.set()
        driver.join(600)
    summary = result["summary"]
    assert summary.failed == [] and summary.ran == 2  # the grid completes
    first_unit, second_unit = sorted(store.runs(store.find_experiment("killed").id),  # type: ignore[arg-type, union-attr]
                                     key=lambda r: r.repeat)
    assert (second_unit.status, second_unit.attempt) == ("finished", 1)  # after the restart
    run = first_unit
    assert (run.status, run.attempt, run.hypothesis) == ("finished", 2, "cakes")
    first = Path(run.transcript_path or "").with_name(
        Path(run.transcript_path or "").name.replace("attempt2", "attempt1"))
    events = [e.data for e in read_transcript(first)]  # attempt 1's transcript is kept
    assert isinstance(events[-1], RunOutcome) and events[-1].end_reason == "worker_unavailable"
    assert any(isinstance(e, ToolCallData) and not e.ok and "restarted" in (e.error or "")
               for e in events)
    assert store.grades(run.id)  # type: ignore[arg-type]


def test_a_worker_no_node_can_host_is_refused(cluster: dict[str, str],
                                              worker_configs: dict[str, Path],
                                              tmp_path: Path) -> None:
    config = _config("too-big", worker_configs, ray={"worker": {"num_gpus": 1}})
    with pytest.raises(AdlInputError, match="No node of the Ray cluster has the resources"):
        run_experiment(config, tmp_path, open_store(f"sqlite:///{tmp_path / 'adl.db'}"),
                       show_progress=False)


def test_ray_options_refuse_credentials_and_unknown_organisms(worker_configs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="credentials"):
        _config("x", worker_configs, ray={"pass_env": ["OPENAI_API_KEY"]})
    config = _config("x", worker_configs, ray={"workers": {"preference_owl": {}}})
    with pytest.raises(AdlInputError, match="preference_owl"):
        config.validate_organisms()
    # Where a grid runs is not part of the stored experiment (resume in process or on Ray).
    assert "ray" not in config.public_dump() and "executor" not in config.public_dump()


def _pid(actor: Any) -> int | None:
    try:
        return ray.get(actor.placement.remote()).pid
    except ray.exceptions.RayActorError:  # dead, not yet restarting
        return None


def _named_actor(prefix: str) -> Any:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(prefix)]
    assert len(names) == 1, names
    return ray.get_actor(names[0])
