"""The heuristic baseline policy runs `adl agent run` offline on the suite's real organism, for
both agents, in-process and against a real worker process (slow: real models). Every offline
organism is run by the agent grid of `make bench-science`."""

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
from tests.conftest import SUITE_ORGANISM, SUITE_SIZE
from tests.worker_fixtures import free_port
from tools.worker.client import wait_for_worker

pytestmark = pytest.mark.slow


def _run_cli(args: list[str], results: Path) -> str:
    env = {**os.environ, "ADL_RESULTS": str(results)}
    done = subprocess.run([sys.executable, "-m", "evals.cli", "agent", "run", *args], check=False,
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_cli_runs_in_process(suite_organisms, tmp_path: Path) -> None:
    out = _run_cli([SUITE_ORGANISM, "--agent", "adl", "--provider", "heuristic", "--budget", "0",
                    "--profile", "quick", "--size", SUITE_SIZE], tmp_path)
    assert "end: submitted" in out and "not an LLM" in out and "transcript:" in out


def test_heuristic_agents_in_process_and_against_a_worker(suite_organisms, tmp_path: Path) -> None:
    service = connect(SUITE_ORGANISM, None, "quick", SUITE_SIZE)
    try:
        for agent in ("adl", "blackbox"):
            path = tmp_path / f"{agent}.jsonl"
            outcome = investigate(service, make_provider("heuristic"), agent, Budgets(interactions=5),  # type: ignore[arg-type]
                                  path, {"organism": SUITE_ORGANISM})
            assert outcome.end_reason == "submitted" and outcome.hypothesis
            assert 0 < outcome.interactions_used <= 5
            assert read_transcript(path)[-1].kind == "run_ended"
    finally:
        service.close()  # type: ignore[attr-defined]

    port = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "evals.cli", "worker", "serve", "--organism",
                               SUITE_ORGANISM, "--profile", "quick", "--size", SUITE_SIZE,
                               "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_worker(url, 600, worker)
        # The ADL agent asks the real model over HTTP; the baseline at i = 0 only connects.
        for agent, budget in (("adl", "5"), ("blackbox", "0")):
            out = _run_cli([SUITE_ORGANISM, "--agent", agent, "--provider", "heuristic", "--budget",
                            budget, "--worker-url", url], tmp_path)
            assert "end: submitted" in out
    finally:
        worker.terminate()
        worker.wait(timeout=60)
