"""The heuristic baseline policy runs `adl agent run` offline on every offline organism, for both
agents, in-process and against a real worker process (slow: real models)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.loop import Budgets, investigate
from agent.providers import make_provider
from agent.transcript import read_transcript
from evals.cli.agent import connect
from evals.organisms import list_organisms
from tests.worker_fixtures import free_port
from tools.worker.client import wait_for_worker

pytestmark = pytest.mark.slow
OFFLINE = sorted(o.name for o in list_organisms() if o.offline)


def _run_cli(args: list[str], results: Path) -> str:
    env = {**os.environ, "ADL_RESULTS": str(results)}
    done = subprocess.run([sys.executable, "-m", "evals.cli", "agent", "run", *args], check=False,
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_cli_runs_in_process(tmp_path: Path) -> None:
    out = _run_cli(["cake_bake", "--agent", "adl", "--provider", "heuristic", "--budget", "5",
                    "--profile", "quick"], tmp_path)
    assert "end: submitted" in out and "not an LLM" in out and "transcript:" in out


@pytest.mark.parametrize("organism", OFFLINE)
def test_heuristic_agents_on_an_organism(organism: str, tmp_path: Path) -> None:
    service = connect(organism, None, "quick")
    try:
        for agent in ("adl", "blackbox"):
            path = tmp_path / f"{agent}.jsonl"
            outcome = investigate(service, make_provider("heuristic"), agent, Budgets(interactions=5),  # type: ignore[arg-type]
                                  path, {"organism": organism})
            assert outcome.end_reason == "submitted" and outcome.hypothesis
            assert 0 < outcome.interactions_used <= 5
            assert read_transcript(path)[-1].kind == "run_ended"
    finally:
        service.close()  # type: ignore[attr-defined]

    port = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "evals.cli", "worker", "serve", "--organism",
                               organism, "--profile", "quick", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_worker(url, 600, worker)
        for agent in ("adl", "blackbox"):
            out = _run_cli([organism, "--agent", agent, "--provider", "heuristic", "--budget", "5",
                            "--worker-url", url], tmp_path)
            assert "end: submitted" in out
    finally:
        worker.terminate()
        worker.wait(timeout=60)
