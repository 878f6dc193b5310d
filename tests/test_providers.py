"""Providers with the real OpenAI and Anthropic SDKs against the local fake server (no network)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.errors import ProviderConfigError, ProviderError
from agent.providers import make_provider, parse_provider_spec
from agent.providers.anthropic_provider import AnthropicProvider
from agent.providers.base import ChatTurn, ToolCall
from agent.providers.openai_provider import OpenAIProvider
from agent.retry import RetryPolicy
from tests.fake_llm_server import FakeLLMServer, FakeReply, RecordedRequest
from tools.toolbox import ToolSpec

FAST = RetryPolicy(max_attempts=3, initial_wait_s=0.01, max_wait_s=2, jitter_s=0)
OPENAI_KEY = "sk-test-openai-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
MALFORMED = '{"prompts": ['
TOOLS = [
    ToolSpec(name="ask", description="Ask the model.",
             parameters={"type": "object", "properties": {"prompts": {"type": "array",
                                                                      "items": {"type": "string"}}},
                         "required": ["prompts"]}),
    ToolSpec(name="finish", description="End the run.",
             parameters={"type": "object", "properties": {"answer": {"type": "string"}}}),
]
CONVERSATION = [
    ChatTurn(role="user", content="What did the finetune change?"),
    ChatTurn(role="assistant", content="Let me ask.",
             tool_calls=[ToolCall(id="call_a", name="ask", arguments='{"prompts": ["hi"]}'),
                         ToolCall(id="call_b", name="ask", arguments=MALFORMED)]),
    ChatTurn(role="tool", tool_call_id="call_a", tool_name="ask", content='{"answers": ["x"]}'),
    ChatTurn(role="tool", tool_call_id="call_b", tool_name="ask", is_error=True,
             content='{"error": "arguments are not valid JSON"}'),
    ChatTurn(role="user", content="Go on."),
]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def openai_provider(server: FakeLLMServer, model: str = "gpt-5", **kw: Any) -> OpenAIProvider:
    return OpenAIProvider(model, api_key=OPENAI_KEY, base_url=server.openai_url,
                          retry=kw.pop("retry", FAST), **kw)


def anthropic_provider(server: FakeLLMServer, model: str = "claude-sonnet-4-5",
                       **kw: Any) -> AnthropicProvider:
    return AnthropicProvider(model, api_key=ANTHROPIC_KEY, base_url=server.anthropic_url,
                             retry=kw.pop("retry", FAST), **kw)


class Backend:
    """One provider kind, driven through the fake server: lets a test run for both."""

    def __init__(self, api: str, server: FakeLLMServer) -> None:
        self.api = api
        self.server = server

    def provider(self, **kw: Any) -> OpenAIProvider | AnthropicProvider:
        make = openai_provider if self.api == "openai" else anthropic_provider
        return make(self.server, **kw)

    @property
    def key(self) -> str:
        return OPENAI_KEY if self.api == "openai" else ANTHROPIC_KEY

    def answer(self, text: str = "", tool_calls: list[tuple[str, str, str]] | None = None,
               **fields: Any) -> None:
        reply = FakeReply(text=text, tool_calls=tool_calls or [], **fields)
        self.server.queue(self.api, reply)  # type: ignore[arg-type]

    def error(self, status: int, message: str = "fake error",
              headers: dict[str, str] | None = None, **fields: Any) -> None:
        reply = FakeReply(status=status, message=message, headers=headers or {}, **fields)
        self.server.queue(self.api, reply)  # type: ignore[arg-type]

    @property
    def requests(self) -> list[RecordedRequest]:
        return [r for r in self.server.requests if r.api == self.api]


@pytest.fixture(params=["openai", "anthropic"])
def backend(request: pytest.FixtureRequest, server: FakeLLMServer) -> Backend:
    return Backend(request.param, server)


def ask(provider: OpenAIProvider | AnthropicProvider, tools: list[ToolSpec] | None = None):
    return provider.complete("You are an investigator.", [ChatTurn(role="user", content="Go.")],
                             TOOLS if tools is None else tools, max_output_tokens=256)


# -- answers: tool calls, usage, cost ------------------------------------------------------------


def test_openai_tool_calls_usage_and_cost(server: FakeLLMServer) -> None:
    server.queue_openai(text="Asking.", tool_calls=[("call_1", "ask", '{"prompts": ["a", "b"]}'),
                                                    ("call_2", "finish", '{"answer": "cake"}')],
                        input_tokens=1000, output_tokens=200, cached_tokens=400)
    completion = ask(openai_provider(server))
    assert completion.text == "Asking."
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("call_1", "ask", '{"prompts": ["a", "b"]}'), ("call_2", "finish", '{"answer": "cake"}')]
    assert completion.usage.input_tokens == 1000
    assert completion.usage.cached_input_tokens == 400
    assert completion.usage.output_tokens == 200
    assert completion.cost_usd == pytest.approx((600 * 1.25 + 400 * 0.125 + 200 * 10.0) / 1e6)
    assert completion.stop_reason == "tool_calls"
    assert completion.attempts == 1
    assert completion.model == "gpt-5"


def test_anthropic_tool_calls_usage_and_cost(server: FakeLLMServer) -> None:
    server.queue_anthropic(text="Asking.", tool_calls=[("toolu_1", "ask", '{"prompts": ["a"]}'),
                                                       ("toolu_2", "finish", "{}")],
                           input_tokens=100, output_tokens=50, cached_tokens=2000,
                           cache_write_tokens=300)
    completion = ask(anthropic_provider(server))
    assert completion.text == "Asking."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("toolu_1", "ask", {"prompts": ["a"]}), ("toolu_2", "finish", {})]
    usage = completion.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
            usage.output_tokens) == (2400, 2000, 300, 50)
    assert completion.cost_usd == pytest.approx(
        (100 * 3.0 + 2000 * 0.3 + 300 * 3.75 + 50 * 15.0) / 1e6)
    assert completion.stop_reason == "tool_use"
    assert completion.attempts == 1


def test_unpriced_model_costs_none(backend: Backend) -> None:
    backend.answer(text="ok")
    completion = ask(backend.provider(model="some-unlisted-model"))
    assert completion.text == "ok"
    assert completion.cost_usd is None
    assert completion.usage.output_tokens == 5


def test_malformed_tool_arguments_pass_through(backend: Backend) -> None:
    """OpenAI sends arguments as a string; a non-conforming Anthropic-style server may too."""
    backend.answer(tool_calls=[("call_x", "ask", MALFORMED)])
    completion = ask(backend.provider())
    assert completion.tool_calls == [ToolCall(id="call_x", name="ask", arguments=MALFORMED)]


# -- requests: tools, conversation, caching ------------------------------------------------------


def test_openai_request_format(server: FakeLLMServer) -> None:
    server.queue_openai(text="ok")
    server.queue_openai(text="ok")
    provider = openai_provider(server)
    provider.complete("SYSTEM", CONVERSATION, TOOLS, max_output_tokens=321)
    provider.complete("SYSTEM", CONVERSATION[:1], [], max_output_tokens=321)
    first, second = server.openai_requests
    assert first.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    body = first.body
    assert body["model"] == "gpt-5"
    assert body["max_completion_tokens"] == 321
    assert "max_tokens" not in body
    assert body["tools"] == [{"type": "function",
                              "function": {"name": t.name, "description": t.description,
                                           "parameters": t.parameters}} for t in TOOLS]
    assert body["messages"] == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": "What did the finetune change?"},
        {"role": "assistant", "content": "Let me ask.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "ask", "arguments": '{"prompts": ["hi"]}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "ask", "arguments": MALFORMED}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"answers": ["x"]}'},
        {"role": "tool", "tool_call_id": "call_b",
         "content": '{"error": "arguments are not valid JSON"}'},
        {"role": "user", "content": "Go on."},
    ]
    assert "tools" not in second.body


def test_anthropic_request_format(server: FakeLLMServer) -> None:
    server.queue_anthropic(text="ok")
    server.queue_anthropic(text="ok")
    provider = anthropic_provider(server)
    provider.complete("SYSTEM", CONVERSATION, TOOLS, max_output_tokens=321)
    provider.complete("SYSTEM", CONVERSATION[:1], [], max_output_tokens=321)
    first, second = server.anthropic_requests
    # anthropic 2.x sends the key as a Bearer token; older SDKs used x-api-key.
    assert ANTHROPIC_KEY in (first.headers.get("x-api-key", ""),
                             first.headers.get("authorization", "").removeprefix("Bearer "))
    body = first.body
    assert body["model"] == "claude-sonnet-4-5"
    assert body["max_tokens"] == 321
    assert body["system"] == [{"type": "text", "text": "SYSTEM",
                               "cache_control": {"type": "ephemeral"}}]
    assert body["tools"] == [
        {"name": "ask", "description": "Ask the model.", "input_schema": TOOLS[0].parameters},
        {"name": "finish", "description": "End the run.", "input_schema": TOOLS[1].parameters,
         "cache_control": {"type": "ephemeral"}},
    ]
    assert body["messages"] == [
        {"role": "user", "content": "What did the finetune change?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me ask."},
            {"type": "tool_use", "id": "call_a", "name": "ask", "input": {"prompts": ["hi"]}},
            {"type": "tool_use", "id": "call_b", "name": "ask", "input": {"_raw": MALFORMED}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": '{"answers": ["x"]}',
             "is_error": False},
            {"type": "tool_result", "tool_use_id": "call_b",
             "content": '{"error": "arguments are not valid JSON"}', "is_error": True},
            {"type": "text", "text": "Go on."}]},
    ]
    assert "tools" not in second.body
    assert second.body["messages"] == [{"role": "user", "content": "What did the finetune change?"}]


def test_anthropic_empty_system_is_left_out(server: FakeLLMServer) -> None:
    server.queue_anthropic(text="ok")
    anthropic_provider(server).complete("", CONVERSATION[:1], TOOLS)
    assert "system" not in server.anthropic_requests[0].body


# -- errors and retries ---------------------------------------------------------------------------


def test_rate_limit_honours_retry_after(backend: Backend) -> None:
    backend.error(429, "slow down", headers={"Retry-After": "1"})
    backend.answer(text="ok")
    started = time.monotonic()
    completion = ask(backend.provider())
    assert time.monotonic() - started >= 0.95
    assert completion.text == "ok"
    assert completion.attempts == 2
    assert len(backend.requests) == 2


def test_rate_limit_honours_retry_after_ms(backend: Backend) -> None:
    backend.error(429, "slow down", headers={"retry-after-ms": "300"})
    backend.answer(text="ok")
    started = time.monotonic()
    assert ask(backend.provider()).attempts == 2
    assert time.monotonic() - started >= 0.28


def test_server_error_then_success_is_retried(backend: Backend) -> None:
    backend.error(500, "boom")
    backend.answer(text="ok")
    completion = ask(backend.provider())
    assert (completion.text, completion.attempts) == ("ok", 2)


def test_anthropic_overloaded_529_is_retried(server: FakeLLMServer) -> None:
    server.queue_anthropic_error(529, "Overloaded")
    server.queue_anthropic(text="ok")
    assert ask(anthropic_provider(server)).attempts == 2


def test_unauthorized_is_not_retried_and_hides_the_key(backend: Backend) -> None:
    backend.error(401, f"Incorrect API key provided: {backend.key}")
    with pytest.raises(ProviderError) as caught:
        ask(backend.provider())
    assert len(backend.requests) == 1
    error = caught.value
    assert (error.status, error.retryable) == (401, False)
    assert backend.key not in str(error)
    assert backend.key[:12] not in str(error)
    assert "authentication failed (HTTP 401)" in str(error)
    assert ("OPENAI_API_KEY" if backend.api == "openai" else "ANTHROPIC_API_KEY") in str(error)


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(backend: Backend, status: int) -> None:
    backend.error(status, "you did something wrong")
    with pytest.raises(ProviderError) as caught:
        ask(backend.provider())
    assert len(backend.requests) == 1
    assert (caught.value.status, caught.value.retryable) == (status, False)
    assert "attempts" not in str(caught.value)


def test_openai_insufficient_quota_is_not_retried(server: FakeLLMServer) -> None:
    server.queue_openai_error(429, "You exceeded your current quota", code="insufficient_quota",
                              error_type="insufficient_quota")
    with pytest.raises(ProviderError) as caught:
        ask(openai_provider(server))
    assert len(server.openai_requests) == 1
    assert "exceeded your current quota" in str(caught.value)


def test_gives_up_after_max_attempts(backend: Backend) -> None:
    for _ in range(FAST.max_attempts):
        backend.error(503, "unavailable")
    with pytest.raises(ProviderError) as caught:
        ask(backend.provider())
    assert len(backend.requests) == FAST.max_attempts
    assert caught.value.retryable is False
    assert caught.value.status == 503
    assert f"gave up after {FAST.max_attempts} attempts" in str(caught.value)


def test_timeout_is_retried(backend: Backend) -> None:
    backend.answer(text="late", delay_s=1.0)
    backend.answer(text="ok")
    completion = ask(backend.provider(timeout=0.2))
    assert (completion.text, completion.attempts) == ("ok", 2)


def test_connection_error_is_retried_then_gives_up() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = RetryPolicy(max_attempts=2, initial_wait_s=0.01, max_wait_s=0.1, jitter_s=0)
    for provider in (OpenAIProvider("gpt-5", api_key=OPENAI_KEY, retry=policy,
                                    base_url=f"http://127.0.0.1:{port}/v1"),
                     AnthropicProvider("claude-sonnet-4-5", api_key=ANTHROPIC_KEY, retry=policy,
                                       base_url=f"http://127.0.0.1:{port}")):
        with pytest.raises(ProviderError, match="gave up after 2 attempts") as caught:
            ask(provider)
        assert "connection error" in str(caught.value)
        assert caught.value.retryable is False


def test_fake_server_without_a_queued_reply_fails_fast(backend: Backend) -> None:
    with pytest.raises(ProviderError, match="no reply queued") as caught:
        ask(backend.provider())
    assert caught.value.status == 400
    assert len(backend.requests) == 1


def test_fake_server_responder(backend: Backend) -> None:
    backend.server.responders[backend.api] = lambda request: FakeReply(  # type: ignore[index]
        text=f"seen {len(request.body['messages'])}")
    expected = "seen 2" if backend.api == "openai" else "seen 1"  # OpenAI counts the system message
    assert ask(backend.provider()).text == expected


# -- specs and make_provider ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "variable"), [("openai:gpt-5", "OPENAI_API_KEY"),
                                                ("anthropic:claude-sonnet-4-5",
                                                 "ANTHROPIC_API_KEY")])
def test_missing_api_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, spec: str,
                                            variable: str) -> None:
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ProviderConfigError, match=variable):
        make_provider(spec)


def test_openai_compatible_spec_parses_url_and_model() -> None:
    parsed = parse_provider_spec("openai-compatible:http://127.0.0.1:8000/v1:my/model")
    assert (parsed.kind, parsed.base_url, parsed.model) == (
        "openai-compatible", "http://127.0.0.1:8000/v1", "my/model")
    assert str(parsed) == "openai-compatible:http://127.0.0.1:8000/v1:my/model"
    with pytest.raises(ProviderConfigError):
        parse_provider_spec("openai-compatible:my/model")
    with pytest.raises(ProviderConfigError):
        parse_provider_spec("openai:")


def test_make_provider_openai_compatible_drives_the_server(server: FakeLLMServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = f"openai-compatible:{server.openai_url}:my/model"
    provider = make_provider(spec, retry=FAST)
    assert (provider.name, provider.model, provider.is_llm) == (spec, "my/model", True)
    server.queue_openai_error(500, "warming up")
    server.queue_openai(tool_calls=[("c1", "ask", MALFORMED)], input_tokens=7, output_tokens=3)
    completion = ask(provider)
    assert completion.tool_calls[0].arguments == MALFORMED
    assert completion.cost_usd is None  # no price for a compatible server's model
    assert completion.attempts == 2
    request = server.openai_requests[-1]
    assert request.body["model"] == "my/model"
    assert request.headers["authorization"] == "Bearer none"


def test_make_provider_with_keys_from_the_environment(server: FakeLLMServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_url)
    server.queue_openai(text="from openai")
    server.queue_anthropic(text="from anthropic")
    openai_p = make_provider("openai:gpt-5", retry=FAST)
    anthropic_p = make_provider("anthropic:claude-haiku-4-5", retry=FAST)
    assert (openai_p.name, anthropic_p.name) == ("openai:gpt-5", "anthropic:claude-haiku-4-5")
    assert ask(openai_p).text == "from openai"
    assert ask(anthropic_p).text == "from anthropic"
