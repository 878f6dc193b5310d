"""A scripted fake LLM server that speaks the OpenAI and Anthropic wire formats.

A real HTTP server on 127.0.0.1 (a free port) in a background thread, so tests drive the real
SDKs end to end without network access::

    from tests.fake_llm_server import FakeLLMServer

    with FakeLLMServer() as server:
        server.queue_openai(text="hi", tool_calls=[("call_1", "ask", '{"prompts": ["x"]}')],
                            input_tokens=100, output_tokens=20, cached_tokens=50)
        server.queue_openai_error(429, headers={"Retry-After": "1"})
        provider = OpenAIProvider("gpt-5", api_key="sk-test", base_url=server.openai_url)
        ...
        server.requests[-1].body["messages"]      # what the SDK sent (parsed JSON)
        server.requests[-1].headers["authorization"]

Endpoints: POST `/v1/chat/completions` (OpenAI; base URL `server.openai_url`, which ends in
`/v1`) and POST `/v1/messages` (Anthropic; base URL `server.anthropic_url`).

Script: each endpoint has a FIFO queue of `FakeReply`s; a request pops the next one.
- `queue_openai(...)` / `queue_anthropic(...)`: a normal answer: `text`, `tool_calls` as
  `(id, name, raw_arguments)` tuples, usage numbers, optional `stop_reason` (defaults:
  "tool_calls"/"stop" for OpenAI, "tool_use"/"end_turn" for Anthropic) and `delay_s`.
  OpenAI sends `raw_arguments` verbatim (malformed JSON included). Anthropic sends tool_use
  `input` as the parsed JSON object; arguments that are not a JSON object are sent as the raw
  string (what a non-conforming compatible server might do).
- `queue_openai_error(status, ...)` / `queue_anthropic_error(status, ...)`: an error with that
  status, optional extra `headers` (e.g. `{"Retry-After": "1"}`) and an error body in the
  endpoint's format (`message`, `error_type`, `code`, and `error_fields` added to the error
  object, e.g. llama.cpp's `{"n_ctx": 4096, "n_prompt_tokens": 4476}`).
- When a queue is empty, `server.responders[api]` (api "openai" or "anthropic"), if set, is
  called with the `RecordedRequest` and must return a `FakeReply`; otherwise the server answers
  HTTP 400 "FakeLLMServer: no reply queued ...", which providers do not retry.

Every request (including failed ones) is recorded in `server.requests` as `RecordedRequest(api,
path, headers (lower-case names), body, query)`; `server.openai_requests` / `server.anthropic_requests`
filter by API.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

Api = Literal["openai", "anthropic"]
PATHS: dict[str, Api] = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                         529: "overloaded_error"}
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                      403: "invalid_request_error", 404: "invalid_request_error",
                      429: "rate_limit_exceeded"}


@dataclass
class FakeReply:
    """One scripted reply: an answer (status 200) or an error (status >= 400)."""

    text: str = ""
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    input_tokens: int = 10
    output_tokens: int = 5
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic only
    stop_reason: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    error_type: str | None = None
    code: str | int | None = None
    error_fields: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    """A request as the server saw it."""

    api: Api | None
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


class FakeLLMServer:
    """The scripted server; use it as a context manager (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[Api, deque[FakeReply]] = {"openai": deque(), "anthropic": deque()}
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self.responders: dict[Api, Callable[[RecordedRequest], FakeReply]] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running")
        return self._httpd.server_address[1]

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- script -----------------------------------------------------------------------------

    def queue(self, api: Api, reply: FakeReply) -> None:
        with self._lock:
            self._queues[api].append(reply)

    def queue_openai(self, text: str = "", tool_calls: Iterable[tuple[str, str, str]] = (),
                     **fields: Any) -> None:
        """Queue an OpenAI answer; `fields` are further `FakeReply` fields (usage, delay_s)."""
        self.queue("openai", FakeReply(text=text, tool_calls=list(tool_calls), **fields))

    def queue_anthropic(self, text: str = "", tool_calls: Iterable[tuple[str, str, str]] = (),
                        **fields: Any) -> None:
        """Queue an Anthropic answer; `fields` are further `FakeReply` fields."""
        self.queue("anthropic", FakeReply(text=text, tool_calls=list(tool_calls), **fields))

    def queue_openai_error(self, status: int, message: str = "fake error",
                           headers: dict[str, str] | None = None, **fields: Any) -> None:
        self.queue("openai", FakeReply(status=status, message=message, headers=headers or {},
                                       **fields))

    def queue_anthropic_error(self, status: int, message: str = "fake error",
                              headers: dict[str, str] | None = None, **fields: Any) -> None:
        self.queue("anthropic", FakeReply(status=status, message=message, headers=headers or {},
                                          **fields))

    def pending(self, api: Api) -> int:
        """How many queued replies are not used yet."""
        with self._lock:
            return len(self._queues[api])

    @property
    def openai_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.api == "openai"]

    @property
    def anthropic_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.api == "anthropic"]

    # -- serving ----------------------------------------------------------------------------

    def _next_reply(self, request: RecordedRequest) -> FakeReply:
        api = request.api
        with self._lock:
            self.requests.append(request)
            if api is None:
                return FakeReply(status=404, message=f"FakeLLMServer: no endpoint {request.path}")
            reply = self._queues[api].popleft() if self._queues[api] else None
        if reply is not None:
            return reply
        responder = self.responders.get(api)
        if responder is not None:
            return responder(request)
        return FakeReply(status=400, message=f"FakeLLMServer: no reply queued for {request.path}")

    def _answer(self, api: Api | None, reply: FakeReply, body: Any) -> dict[str, Any]:
        model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
        number = next(self._ids)
        if api == "anthropic":
            if reply.status >= 400:
                return {"type": "error", "request_id": f"req_fake_{number}",
                        "error": {"type": reply.error_type or ANTHROPIC_ERROR_TYPES.get(
                                      reply.status, "api_error"),
                                  "message": reply.message or "fake error",
                                  **reply.error_fields}}
            return _anthropic_message(reply, model, number)
        if reply.status >= 400:
            return {"error": {"message": reply.message or "fake error",
                              "type": reply.error_type or OPENAI_ERROR_TYPES.get(
                                  reply.status, "server_error"),
                              "param": None, "code": reply.code, **reply.error_fields}}
        return _openai_completion(reply, model, number)


def _openai_completion(reply: FakeReply, model: str, number: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None,
                               "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": i, "type": "function",
                                  "function": {"name": n, "arguments": a}}
                                 for i, n, a in reply.tool_calls]
    finish = reply.stop_reason or ("tool_calls" if reply.tool_calls else "stop")
    return {
        "id": f"chatcmpl-fake-{number}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                  "total_tokens": reply.input_tokens + reply.output_tokens,
                  "prompt_tokens_details": {"cached_tokens": reply.cached_tokens}},
    }


def _anthropic_message(reply: FakeReply, model: str, number: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for call_id, name, arguments in reply.tool_calls:
        try:
            parsed: Any = json.loads(arguments)
        except ValueError:
            parsed = None
        tool_input = parsed if isinstance(parsed, dict) else arguments
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": tool_input})
    stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
    return {
        "id": f"msg_fake_{number}", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                  "cache_read_input_tokens": reply.cached_tokens,
                  "cache_creation_input_tokens": reply.cache_write_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeLLMServer  # set on the subclass made by FakeLLMServer.start

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:  # http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path, _, query = self.path.partition("?")
        api = PATHS.get(path)
        request = RecordedRequest(api=api, path=path,
                                  headers={k.lower(): v for k, v in self.headers.items()},
                                  body=body, query=query)
        reply = self.fake._next_reply(request)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        payload = json.dumps(self.fake._answer(api, reply, body)).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass
