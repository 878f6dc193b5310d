"""Secrets never leave the process: credentials in a provider spec, API keys in tracebacks and
stacks, and uvicorn's own log handlers."""

from __future__ import annotations

import base64
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn
import yaml
from rich.console import Console

from agent.providers import parse_provider_spec, public_spec
from tests.fake_llm_server import FakeLLMServer, FakeReply
from tools.secrets import LIBRARY_LOGGERS, redact, uvicorn_log_config

USER, PASSWORD, QUERY_KEY = "alice-USER-7f3a9c", "pw-PASS-4b8e2d1f", "qk-QUERY-9c2e7a5b"
ENV_KEY, WORKER_TOKEN = "env-OPENAI-KEY-51d0c3", "worker-TOKEN-8e2b6f41"
KEY_SHAPED = "sk-proj-AbCdEfGhIjKlMnOpQrStUv123"
SECRETS = (USER, PASSWORD, QUERY_KEY)


@pytest.fixture(scope="module")
def worker_url(cake_worker_url: str) -> str:
    """The session's tiny worker served as cake_bake (tests/conftest.py)."""
    return cake_worker_url


def test_public_spec_masks_credentials_and_keeps_the_rest() -> None:
    spec = f"openai-compatible:https://{USER}:{PASSWORD}@h:8/v1?api_key={QUERY_KEY}&api-version=7:org/m-1"
    assert public_spec(spec) == "openai-compatible:https://***@h:8/v1?api_key=***&api-version=7:org/m-1"
    for plain in ("heuristic", "openai:gpt-5", "openai-compatible:http://localhost:8000/v1:Qwen/Qwen3-8B"):
        assert public_spec(plain) == plain  # stored unit keys of these stay the same
    with pytest.raises(Exception, match="BASE_URL:MODEL") as raised:  # no :MODEL after the query
        parse_provider_spec(f"openai-compatible:https://{USER}:{PASSWORD}@h/v1?key={QUERY_KEY}")
    assert not any(secret in str(raised.value) for secret in SECRETS)


def _everything_written(results: Path) -> bytes:
    """Every file under `results`: names and bytes (the SQLite database included)."""
    files = sorted(p for p in results.rglob("*") if p.is_file())
    return b"\n".join([str(p).encode() for p in files] + [p.read_bytes() for p in files])


def test_credentials_in_a_provider_spec_reach_nothing_written(worker_url: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    with FakeLLMServer() as server:
        server.responders["openai"] = lambda _: FakeReply(
            tool_calls=[("s", "submit_hypothesis", '{"description": "baking cakes"}')])
        host = server.openai_url.removeprefix("http://")
        spec = f"openai-compatible:http://{USER}:{PASSWORD}@{host}?api_key={QUERY_KEY}&api-version=7:gpt-fake"
        config = tmp_path / "leaky.yaml"
        config.write_text(yaml.safe_dump({
            "name": "leaky", "organisms": ["cake_bake"], "agents": ["adl"], "budgets": [0],
            "providers": [spec], "grader": "offline", "workers": {"cake_bake": worker_url},
            "concurrency": 1, "ask_models": {"max_new_tokens": 8}}))
        env = {**os.environ, "ADL_RESULTS": str(results)}
        env.pop("ADL_DATABASE_URL", None)
        outputs = []
        for command in (["-v", "eval", "run", str(config)], ["eval", "show", "1"], ["eval", "show", "1", "--json"]):
            done = subprocess.run([sys.executable, "-m", "evals.cli", *command], check=False,
                                  capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout + done.stderr)
        request = server.openai_requests[0]
    # The calls used the real spec: the query key and the basic-auth credentials were sent.
    assert f"api_key={QUERY_KEY}" in request.query and "api-version=7" in request.query
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert "1 run now, 0 failed" in outputs[0] and "baking cakes" in outputs[1]
    written = _everything_written(results)
    assert b"api_key=***" in written and b"***@" in written  # the redacted spec is what is stored
    assert list((results / "transcripts" / "leaky").glob("*.jsonl"))
    for secret in SECRETS:
        assert secret.encode() not in written, secret
        assert not any(secret in output for output in outputs), secret


@pytest.fixture()
def bare_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The root logger without handlers (so basicConfig configures it), restored afterwards,
    with uvicorn's loggers restored too."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in LIBRARY_LOGGERS}
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("ADL_WORKER_TOKEN", WORKER_TOKEN)
    yield root
    for handler in root.handlers:
        handler.close()
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def _fail_with_secrets(log: logging.Logger) -> None:
    try:
        raise RuntimeError(f"HTTP 401: key {ENV_KEY} (or {KEY_SHAPED}) refused, token {WORKER_TOKEN}")
    except RuntimeError:
        log.exception("the call failed")
    log.warning("stack of the call", stack_info=True)  # a stack shows this line: sk-proj-AbCdEfGhIjKlMnOpQrStUv123


def _leaked(text: str) -> list[str]:
    flat = "".join(text.split())  # Rich wraps long lines: look for secrets across the wraps
    return [s for s in (ENV_KEY, WORKER_TOKEN, KEY_SHAPED, KEY_SHAPED[8:]) if s in flat]


def test_tracebacks_are_redacted_in_the_console_and_the_file_log(bare_root: logging.Logger,
                                                                  tmp_path: Path) -> None:
    from evals.cli.logs import configure_logging

    bare_root.handlers.clear()  # pytest's capture handlers were added for this test's call
    stream, log_file = io.StringIO(), tmp_path / "adl.log"
    configure_logging(Console(file=stream, width=100), log_file=log_file)
    _fail_with_secrets(logging.getLogger("adl.test"))
    for handler in bare_root.handlers:
        handler.flush()
    console, file_log = stream.getvalue(), log_file.read_text()
    for text in (console, file_log):
        assert "RuntimeError" in text and "[REDACTED]" in text and "stack of the call" in text
        assert _leaked(text) == []
    assert "_fail_with_secrets" in file_log  # the stack was written, redacted


def test_uvicorn_handlers_of_the_worker_and_the_viewer_redact(bare_root: logging.Logger,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from evals import viewer
    from tools.worker import http

    async def app(scope, receive, send) -> None:  # never called: the server does not run
        raise AssertionError

    monkeypatch.setattr(http, "create_app", lambda *args, **kwargs: app)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: None)
    http.serve(lambda: SimpleNamespace(config=SimpleNamespace(label="tiny")))  # type: ignore[arg-type, return-value]
    _fail_with_secrets(logging.getLogger("uvicorn.error"))
    captured = capsys.readouterr().err
    assert "RuntimeError" in captured and "[REDACTED]" in captured and "stack of the call" in captured
    assert _leaked(captured) == []

    served: dict[str, object] = {}
    monkeypatch.setattr(viewer.uvicorn, "run", lambda *args, **kwargs: served.update(kwargs))
    viewer.serve_viewer(SimpleNamespace())  # type: ignore[arg-type]
    assert served["log_config"] == uvicorn_log_config()


def test_redact_masks_key_shaped_strings_and_url_credentials() -> None:
    text = f"Bearer {WORKER_TOKEN}x; {KEY_SHAPED}; https://{USER}:{PASSWORD}@h/v1?key={QUERY_KEY}&v=1"
    cleaned = redact(text)
    assert cleaned == "Bearer [REDACTED]; [REDACTED]; https://***@h/v1?key=***&v=1"
    # A password with an @ in it is masked whole (userinfo ends at the last @ before the path).
    assert redact(f"https://{USER}:p@{PASSWORD}@h/v1") == "https://***@h/v1"
