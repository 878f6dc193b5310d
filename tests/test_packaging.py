"""Packaging: every data file the packages read at run time is declared as package data (an
editable install hides a missing declaration; the Docker images use a normal install); the
import contracts hold; an install without the worker extra (no torch) runs agents and grids
against a remote worker."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from evals.cli import WORKER_MODULES

ROOT = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = {".yaml", ".yml", ".md", ".html", ".mako", ".txt", ".json", ".jinja"}


def test_data_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    tracked = subprocess.run(["git", "ls-files", "agent", "tools", "evals", "prompts"], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout.split()
    missing = []
    for name in tracked:
        path = Path(name)
        if path.suffix not in DATA_SUFFIXES or path.parts[-2:] == ("configs", path.name):
            continue  # evals/configs/ holds example configs for users, not run-time data
        covered = False
        for package, patterns in package_data.items():
            folder = Path(*package.split("."))
            if folder in path.parents:
                relative = path.relative_to(folder).as_posix()
                covered |= any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p.replace("**/", ""))
                               for p in patterns)
        if not covered:
            missing.append(name)
    assert not missing, f"not declared in [tool.setuptools.package-data]: {missing}"


def test_dependency_directions_hold() -> None:
    """The import-linter contracts of pyproject.toml (tools -> agent -> evals; evals outside
    the CLI never imports it; production code never imports the tests)."""
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], cwd=ROOT, check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_client_contract_forbids_the_whole_worker_extra() -> None:
    """The client-path contract forbids every module of the worker extra (WORKER_MODULES)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    client = next(c for c in contracts if c["name"].startswith("the client path"))
    assert WORKER_MODULES <= set(client["forbidden_modules"])


# The worker extra's heavy packages: an install without them (`pip install adl-agent`) must run
# agents and evaluation grids against a remote worker.
WORKER_ONLY = ("torch", "transformers", "transformer_lens", "peft")
# Run first in the child interpreter: importing any module of the worker extra (evals.cli's
# list) fails there, as in a client install.
BLOCK_WORKER_EXTRA = f"""
import importlib.abc, sys

class _ClientInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(WORKER_MODULES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (a client install)", name=name)
        return None

sys.meta_path.insert(0, _ClientInstall())
"""
CLIENT_MODULES = ("tools.worker.schema", "tools.worker.client", "tools.toolbox", "agent.providers",
                  "agent.providers.openai_provider", "agent.providers.anthropic_provider",
                  "agent.providers.heuristic", "agent.providers.scripted", "agent.loop",
                  "agent.judges", "evals.runs", "evals.workers", "evals.grading", "evals.store",
                  "evals.compare", "evals.viewer", "evals.cli", "evals.ray_executor",
                  "evals.export", "evals.inspect_logs")


def _client_python(code: str, env: dict[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter where the worker extra's packages cannot be imported."""
    return subprocess.run([sys.executable, "-c", BLOCK_WORKER_EXTRA + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_client_path_imports_no_torch() -> None:
    """The wire schema, the worker client, the providers, the loop, the evaluation runner and
    the CLI import in a fresh interpreter without torch, transformers, transformer_lens or peft
    (the static side of this is the import-linter contract in pyproject.toml)."""
    done = _client_python(
        f"import importlib\nfor name in {CLIENT_MODULES!r}:\n    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {WORKER_ONLY!r}))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
    code = ("import sys, agent.loop, agent.providers, evals.runs, evals.cli, tools.worker.client\n"
            f"print(sorted(m for m in {WORKER_ONLY!r} if m in sys.modules))")
    plain = subprocess.run(  # and nothing imports them when they are installed either
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False)
    assert plain.returncode == 0 and plain.stdout.strip() == "[]", plain.stdout + plain.stderr[-3000:]


def test_a_client_install_runs_an_agent_and_a_grid_against_a_remote_worker(
        cake_worker_url: str, tmp_path: Path) -> None:
    """`adl agent run` and `adl eval run` (graded by an LLM: the offline grader needs torch)
    against a worker over HTTP, in an interpreter that cannot import torch."""
    from tests.fake_llm_server import FakeLLMServer, FakeReply

    env = {**os.environ, "ADL_RESULTS": str(tmp_path / "results"), "HF_HUB_OFFLINE": "1"}
    for variable in ("ADL_DATABASE_URL", "ADL_WORKER_URL", "ADL_WORKER_TOKEN"):
        env.pop(variable, None)
    cli = "from evals.cli import main\nsys.argv = ['adl', *sys.argv[1:]]\nmain()\n"

    def adl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", BLOCK_WORKER_EXTRA + cli, *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300, check=False)

    agent = adl("agent", "run", "cake_bake", "--worker-url", cake_worker_url, "--budget", "1",
                "--ask-max-new-tokens", "8")
    assert agent.returncode == 0, agent.stdout[-2000:] + agent.stderr[-3000:]
    assert "hypothesis:" in agent.stdout and "transcript:" in agent.stdout

    offline = adl("eval", "run", str(_grid(tmp_path, cake_worker_url, "offline")))
    message = " ".join(offline.stderr.split())  # the offline grader is refused up front
    assert offline.returncode == 2 and "install adl-agent[worker], or grade with an LLM" in message, message

    with FakeLLMServer() as server:
        grade = '{"reasoning": "It names the domain.", "score": 3}'
        server.responders["openai"] = lambda request: FakeReply(
            tool_calls=[("call_1", "record_grade", grade)])
        config = _grid(tmp_path, cake_worker_url, f"openai-compatible:{server.openai_url}:grader")
        done = adl("eval", "run", str(config))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "0 already stored, 2 run now" in done.stdout, done.stdout[-2000:]


def _grid(folder: Path, url: str, grader: str) -> Path:
    """A grid of both agents on cake_bake at budget 0, graded by `grader`."""
    name = "client-" + grader.partition(":")[0]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "organisms": ["cake_bake"], "agents": ["adl", "blackbox"], "budgets": [0],
        "providers": ["heuristic"], "grader": grader, "grader_repeats": 1,
        "workers": {"cake_bake": url}, "concurrency": 1, "ask_models": {"max_new_tokens": 8},
    }))
    return path


def test_without_the_worker_extra_an_unusable_worker_url_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When ADL_WORKER_URL is unreachable or serves another organism and the worker extra is
    missing, the grid ends with an error naming the organism, the URL and why it was not used
    (not a bare "install the worker extra")."""
    from evals import runs, workers
    from tools.errors import AdlInputError, WorkerUnavailableError

    class OtherWorker:
        def __init__(self, url: str, token: str | None = None) -> None:
            self.url = url

        def info(self) -> SimpleNamespace:
            if "down" in self.url:
                raise WorkerUnavailableError(f"The worker at {self.url} cannot be reached.")
            return SimpleNamespace(label="other_organism")

    monkeypatch.setattr(runs, "HttpWorkerClient", OtherWorker)
    monkeypatch.setattr(workers, "_installed", lambda module: module != "torch")
    config = runs.EvalConfig(name="client", organisms=["cake_bake"], grader="openai:m")
    for url, why in (("http://down.example:8765", "is unreachable"),
                     ("http://user:pw@other.example:8765", "serves 'other_organism', not 'cake_bake'")):
        monkeypatch.setenv("ADL_WORKER_URL", url)
        found, not_used = runs._worker_url(config, "cake_bake")
        assert found is None
        with pytest.raises(AdlInputError) as error:
            workers.connect("cake_bake", found, "quick", not_used=not_used)
        message = str(error.value)
        assert "'cake_bake'" in message and why in message and "pw" not in message
        assert url.replace("user:pw", "***") in message
        assert "adl worker serve --organism cake_bake" in message
        assert "torch not installed" in message and "adl-agent[worker]" in message


def test_a_client_install_without_a_worker_url_says_to_start_one() -> None:
    """In an interpreter without the worker extra, connect without a URL names the missing
    worker instead of failing on the in-process worker's imports."""
    done = _client_python(
        "from evals.workers import connect\nfrom tools.errors import AdlInputError\n"
        "try:\n    connect('cake_bake', None, 'quick')\n"
        "except AdlInputError as exc:\n    print(exc)\n")
    assert done.returncode == 0, done.stderr[-3000:]
    message = " ".join(done.stdout.split())
    assert "No worker serves 'cake_bake' (no worker URL was given)" in message, message
    assert "torch, transformers, transformer_lens, peft not installed" in message
