"""The worker under hostile input and faults (issue 15): amplification, bounded fields, internal
errors, DNS rebinding, starvation, disconnects and auth order. Each test runs a real uvicorn
server in a thread around its own `AdlService` on the session's tiny model pair."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.loop import Budgets, investigate
from agent.providers.base import Completion, ToolCall, Usage
from agent.providers.scripted import ScriptedProvider
from agent.transcript import ToolCallEvent, read_transcript
from tests.worker_fixtures import TINY_ASK, serve_in_thread
from tools.errors import WorkerRequestError, WorkerUnavailableError
from tools.net import allowed_host_names
from tools.worker.client import HttpWorkerClient
from tools.worker.http import WorkerAuthError, check_bind, create_app
from tools.worker.schema import ChatRequest, ReadoutRequest
from tools.worker.service import AdlService

TOKEN = "hardening-token-0123456789abcdef-0123"


class SlowService(AdlService):
    """The tiny service with every chat batch slowed down, counting the batches it runs."""

    chat_delay_s = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.chat_batches = 0
        super().__init__(*args, **kwargs)

    def _run_chat(self, side: str, prompts: list[str], max_new_tokens: int, temperature: float,
                  seed: int) -> list[str]:
        self.chat_batches += 1
        time.sleep(self.chat_delay_s)
        return super()._run_chat(side, prompts, max_new_tokens, temperature, seed)


def own_service(shared: AdlService, *, delay_s: float = 0.0, **limits: Any) -> SlowService:
    """A service of its own (own queue, closed by its server) on the shared pair and artifacts."""
    config = shared.config.model_copy(update={"limits": shared.limits.model_copy(update=limits)})
    service = SlowService(config, shared.pair, shared.artifacts, shared.steering, shared.steering_prompts)
    service.chat_delay_s = delay_s
    return service


def serving(service: AdlService, token: str | None = None) -> AbstractContextManager[str]:
    """Serve `service` with the real app on a loopback port; yields the URL."""
    return serve_in_thread(create_app(service, token, allowed_host_names("127.0.0.1")), "the worker")


def fail_once(function: Callable[..., Any], on_call: int = 1) -> Callable[..., Any]:
    """`function`, except that its `on_call`-th call raises an unexpected error."""
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == on_call:
            raise RuntimeError("injected fault")
        return function(*args, **kwargs)

    return wrapped


def test_duplicate_positions_cannot_amplify_a_reply(tiny_service: AdlService) -> None:
    """Issue 15.1: a 60 KB body of repeated positions once returned 242 MiB."""
    with serving(own_service(tiny_service, max_request_bytes=1_000_000)) as url:
        repeated = httpx.post(f"{url}/readouts", json={"dataset": "dataset_1", "positions": [0] * 256, "k": 100})
        assert repeated.status_code == 200
        assert [row["position"] for row in repeated.json()["positions"]] == [0]
        every = httpx.post(f"{url}/readouts", json={"dataset": "dataset_1", "positions": [2, 0, 2, 1, 0]})
        assert [row["position"] for row in every.json()["positions"]] == [2, 0, 1]
        hostile = httpx.post(f"{url}/readouts", json={"dataset": "dataset_1", "positions": [0] * 30_000, "k": 100})
        assert hostile.status_code == 422 and hostile.json()["error"]["fields"] == ["positions"]
        assert len(hostile.content) < 10_000 and len(repeated.content) < 100_000


def test_repeated_steering_prompts_cannot_amplify_a_reply(tiny_service: AdlService) -> None:
    with serving(own_service(tiny_service, max_request_bytes=1_000_000)) as url:
        repeated = httpx.post(f"{url}/steered-samples", json={"dataset": "dataset_1", "position": 1,
                                                               "prompts": ["hello"] * 3, "n": 2})
        assert repeated.status_code == 200 and len(repeated.json()["samples"]) == 1
        many = httpx.post(f"{url}/steered-samples", json={"dataset": "dataset_1", "position": 1,
                                                           "prompts": [f"p{i}" for i in range(200)]})
        assert many.status_code == 400 and "Too many prompts" in many.json()["error"]["message"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/chat", {"prompts": ["hi"], "seed": 2**70}, "seed"),
    ("/chat", {"prompts": ["hi"], "seed": -1}, "seed"),
    ("/chat", {"prompts": ["hi"], "max_new_tokens": 2**70}, "max_new_tokens"),
    ("/chat", {"prompts": ["hi"], "sides": ["base"] * 3}, "sides"),
    ("/readouts", {"dataset": "dataset_1", "layer": 2**70}, "layer"),
    ("/readouts", {"dataset": "d" * 65}, "dataset"),
    ("/steered-samples", {"dataset": "dataset_1", "position": 2**70}, "position"),
    ("/steered-samples", {"dataset": "dataset_1", "position": 1, "n": 2**40}, "n"),
    ("/generate-steered", {"dataset": "dataset_1", "position": 1, "prompts": ["x"], "seed": 2**64}, "seed"),
])
def test_every_integer_and_list_field_is_bounded(tiny_service: AdlService, path: str,
                                                 body: dict[str, Any], field: str) -> None:
    """Issue 15.2: an unbounded seed once raised a 500."""
    with serving(own_service(tiny_service)) as url:
        answer = httpx.post(f"{url}{path}", json=body)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["error"]["fields"]


def test_an_internal_error_is_a_500_and_the_connection_stays_open(tiny_service: AdlService) -> None:
    """Issue 15.2: the server used to drop the keep-alive connection after a 500."""
    service = own_service(tiny_service)
    service.readouts = fail_once(service.readouts)  # type: ignore[method-assign]
    with serving(service) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        body = json.dumps({"dataset": "dataset_1"})
        headers = {"Content-Type": "application/json"}
        connection.request("POST", "/readouts", body=body, headers=headers)
        failed = connection.getresponse()
        error = json.loads(failed.read())["error"]
        assert failed.status == 500 and error["type"] == "internal" and "injected fault" in error["message"]
        time.sleep(0.3)  # a dropped connection would be closed by now
        connection.request("POST", "/readouts", body=body, headers=headers)  # the same connection
        again = connection.getresponse()
        assert again.status == 200 and json.loads(again.read())["layer"] == 3
        connection.close()


def test_the_client_resends_once_after_a_broken_connection() -> None:
    attempts: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        if len(attempts) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"status": "ok"})

    assert HttpWorkerClient("http://worker", transport=httpx.MockTransport(flaky)).health() == {"status": "ok"}
    assert attempts == ["/health", "/health"]

    def gone(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ConnectError("Connection refused")

    attempts.clear()
    with pytest.raises(WorkerUnavailableError, match="cannot be reached"):
        HttpWorkerClient("http://worker", transport=httpx.MockTransport(gone)).health()
    assert len(attempts) == 2

    def slow(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ReadTimeout("timed out")

    attempts.clear()
    with pytest.raises(WorkerUnavailableError):
        HttpWorkerClient("http://worker", transport=httpx.MockTransport(slow)).health()
    assert len(attempts) == 1  # a timeout is not resent: the worker may still be at it


def test_waiting_out_busy_answers_keeps_the_resend_after_a_broken_connection() -> None:
    script = iter(["busy", "busy", "reset", "ok"])

    def mixed(request: httpx.Request) -> httpx.Response:
        step = next(script)
        if step == "reset":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if step == "busy":
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": {"type": "busy", "message": "full"}})
        return httpx.Response(200, json={"status": "ok"})

    assert HttpWorkerClient("http://worker", transport=httpx.MockTransport(mixed)).health() == {"status": "ok"}


def test_the_client_waits_out_a_busy_worker() -> None:
    answers = iter([503, 503, 200])
    seen: list[float] = []

    def busy_twice(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        status = next(answers)
        if status == 503:
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": {"type": "busy", "message": "full"}})
        return httpx.Response(200, json={"status": "ok"})

    assert HttpWorkerClient("http://worker", transport=httpx.MockTransport(busy_twice)).health() == {"status": "ok"}
    assert len(seen) == 3

    def stopping(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return httpx.Response(503, json={"error": {"type": "stopping", "message": "bye"}})

    seen.clear()
    with pytest.raises(WorkerRequestError, match="stopping"):
        HttpWorkerClient("http://worker", transport=httpx.MockTransport(stopping)).health()
    assert len(seen) == 1  # only `busy` is sent again


def test_an_internal_error_in_one_tool_call_does_not_end_the_agent_run(tiny_service: AdlService,
                                                                        tmp_path: Path) -> None:
    """Fault injection: the worker fails one call; the agent sees an error result and goes on."""
    service = own_service(tiny_service)
    # The overview at the start of the run reads the readouts twice (logit lens, Patchscope):
    # the fault hits the agent's first tool call.
    service.readouts = fail_once(service.readouts, on_call=3)  # type: ignore[method-assign]
    usage = Usage(input_tokens=10, output_tokens=5)

    def calls(name: str, arguments: str) -> Completion:
        return Completion(tool_calls=[ToolCall(id=f"c_{name}", name=name, arguments=arguments)],
                          usage=usage, cost_usd=None, model="scripted")

    provider = ScriptedProvider([
        calls("get_token_readouts", '{"k": 3}'),
        calls("get_token_readouts", '{"k": 3}'),
        calls("submit_hypothesis", '{"description": "birds"}'),
    ])
    path = tmp_path / "fault.jsonl"
    with serving(service) as url:
        outcome = investigate(HttpWorkerClient(url), provider, "adl", Budgets(), path, ask=TINY_ASK)
    assert outcome.end_reason == "submitted" and outcome.hypothesis == "birds", outcome.detail
    assert outcome.tool_errors == 1
    tool_events = [e for e in read_transcript(path) if isinstance(e, ToolCallEvent)]
    assert not tool_events[0].data.ok and "injected fault" in tool_events[0].data.model_dump_json()
    assert tool_events[1].data.ok
    tool_turns = [m for m in provider.seen[1] if m.role == "tool"]
    assert tool_turns[0].is_error and "injected fault" in tool_turns[0].content


def test_the_agent_sees_an_internal_error_as_a_tool_error(tiny_service: AdlService) -> None:
    service = own_service(tiny_service)
    with serving(service) as url:
        client = HttpWorkerClient(url)
        client.readouts(ReadoutRequest(dataset="dataset_1"))
        service.readouts = fail_once(service.readouts)  # type: ignore[method-assign]
        with pytest.raises(WorkerRequestError, match="injected fault") as failure:
            client.readouts(ReadoutRequest(dataset="dataset_1"))
        assert failure.value.error_type == "internal"
        assert client.readouts(ReadoutRequest(dataset="dataset_1")).layer == 3


def test_a_foreign_host_header_is_refused(tiny_service: AdlService) -> None:
    """Issue 15.3: DNS rebinding (a page's name resolved to 127.0.0.1) once drove the models."""
    with serving(own_service(tiny_service)) as url:
        port = url.rsplit(":", 1)[1]
        for path in ["/info", "/health", "/overview"]:
            rebound = httpx.get(f"{url}{path}", headers={"Host": f"attacker.example:{port}"})
            assert rebound.status_code == 400, path
        rebound_chat = httpx.post(f"{url}/chat", json={"prompts": ["hi"]}, headers={"Host": "attacker.example"})
        assert rebound_chat.status_code == 400
        for name in ["localhost", "127.0.0.1", f"localhost:{port}"]:
            assert httpx.get(f"{url}/info", headers={"Host": name}).status_code == 200, name


def test_allowed_host_names_follow_the_bind_address() -> None:
    assert allowed_host_names("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert "[::1]" in allowed_host_names("::1")
    assert allowed_host_names("10.0.0.5") == ["localhost", "127.0.0.1", "[::1]", "10.0.0.5"]
    everywhere = allowed_host_names("0.0.0.0", ["worker"])
    assert everywhere[:4] == ["localhost", "127.0.0.1", "[::1]", "worker"]
    assert socket.gethostname().lower() in everywhere  # the machine's own name and addresses
    for bind in ("0.0.0.0", "::", "10.0.0.5", "127.0.0.1"):
        assert "*" not in allowed_host_names(bind) and "attacker.example" not in allowed_host_names(bind)


def test_ipv6_loopback_host_names_are_accepted(tiny_service: AdlService) -> None:
    with serving(own_service(tiny_service)) as url:
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"{url}/info", headers={"Host": f"[::1]:{port}"}).status_code == 200
        assert httpx.get(f"{url}/info", headers={"Host": f"[::2]:{port}"}).status_code == 400


def test_auth_is_checked_before_the_body_and_tokens_are_long() -> None:
    with pytest.raises(WorkerAuthError, match="at least 32"):
        check_bind("127.0.0.1", "short-token")
    with pytest.raises(WorkerAuthError, match="at least 32"):
        check_bind("0.0.0.0", "x" * 31)
    check_bind("0.0.0.0", "x" * 32)


def test_a_malformed_body_without_a_token_gets_401(tiny_service: AdlService) -> None:
    """Issue 15.5: it got 422 before 401 (the body was validated first)."""
    with serving(own_service(tiny_service), token=TOKEN) as url:
        for body in [b"{oops", b'{"dataset": 5}']:
            answer = httpx.post(f"{url}/readouts", content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 401 and answer.json()["error"]["type"] == "unauthorized"
        assert httpx.get(f"{url}/health").status_code == 200
        authorized = HttpWorkerClient(url, token=TOKEN)
        assert authorized.readouts(ReadoutRequest(dataset="dataset_1")).layer == 3


def test_sixty_concurrent_requests_with_a_small_in_flight_cap(tiny_service: AdlService) -> None:
    """Issue 15.4 load test: some requests get 503 with Retry-After, /health answers within 1 s
    throughout, and every accepted request completes."""
    service = own_service(tiny_service, delay_s=0.15, max_in_flight=4)
    health_latencies: list[float] = []
    stop = threading.Event()
    with serving(service) as url:
        def watch_health() -> None:
            with httpx.Client(timeout=5) as probe:
                while not stop.is_set():
                    started = time.monotonic()
                    assert probe.get(f"{url}/health").json() == {"status": "ok"}
                    health_latencies.append(time.monotonic() - started)
                    time.sleep(0.05)

        def ask(i: int) -> httpx.Response:
            with httpx.Client(timeout=120) as own:
                return own.post(f"{url}/chat", json={"prompts": [f"hello {i}"], "sides": ["finetuned"],
                                                     "max_new_tokens": 4, "temperature": 1.0, "seed": i})

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(60) as pool:
                answers = list(pool.map(ask, range(60)))
        finally:
            stop.set()
            watcher.join(timeout=10)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    busy = [a for a in answers if a.status_code == 503]
    assert busy and all(a.headers["Retry-After"] == "1" and a.json()["error"]["type"] == "busy" for a in busy)
    accepted = [a for a in answers if a.status_code == 200]
    assert accepted and all(len(a.json()["replies"]) == 1 for a in accepted)
    assert health_latencies and max(health_latencies) < 1.0, max(health_latencies)


def test_a_client_that_hangs_up_has_its_queued_work_dropped(tiny_service: AdlService) -> None:
    service = own_service(tiny_service, delay_s=1.5)
    with serving(service) as url:
        def occupy() -> None:
            httpx.post(f"{url}/chat", json={"prompts": ["first"], "sides": ["finetuned"], "max_new_tokens": 2},
                       timeout=30)

        first = threading.Thread(target=occupy)
        first.start()
        time.sleep(0.3)  # the first chat is now running on the model thread
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/chat", json={"prompts": ["second"], "sides": ["finetuned"],
                                            "max_new_tokens": 2, "temperature": 1.0}, timeout=0.5)
        first.join(timeout=30)
        deadline = time.monotonic() + 10
        while service.queue.jobs_cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert service.queue.jobs_cancelled == 1
        assert service.chat_batches == 1  # the second chat never ran
        assert HttpWorkerClient(url).chat(ChatRequest(prompts=["third"], sides=["finetuned"],
                                                      max_new_tokens=2)).replies
