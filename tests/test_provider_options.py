"""Provider options against the fake wire server with the real SDKs: the output-limit parameter
per provider kind, the Anthropic system prompt style, context-length errors (typed, never
retried), 5xx answers that call the request invalid (not retried), and the model table's
context windows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from agent.errors import ContextLengthError, ProviderError
from agent.pricing import cost_usd, known_context_window, model_table
from agent.providers import ProviderOptions, make_provider
from agent.providers.anthropic_provider import AnthropicProvider
from agent.providers.base import ChatTurn, Usage
from agent.providers.heuristic import HeuristicProvider
from agent.providers.openai_provider import OpenAIKind, OpenAIProvider
from agent.providers.scripted import ScriptedProvider
from agent.retry import RetryPolicy
from tests.fake_llm_server import FakeLLMServer, FakeReply
from tools.toolbox import ToolSpec

FAST = RetryPolicy(max_attempts=3, initial_wait_s=0.01, max_wait_s=1, jitter_s=0)
TOOLS = [ToolSpec(name="finish", description="End the run.",
                  parameters={"type": "object", "properties": {"answer": {"type": "string"}}})]
GO = [ChatTurn(role="user", content="Go.")]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def openai_provider(server: FakeLLMServer, kind: OpenAIKind = "openai", model: str = "gpt-5",
                    options: ProviderOptions | None = None) -> OpenAIProvider:
    return OpenAIProvider(model, api_key="sk-test", base_url=server.openai_url, retry=FAST,
                          kind=kind, options=options)


def anthropic_provider(server: FakeLLMServer,
                       options: ProviderOptions | None = None) -> AnthropicProvider:
    return AnthropicProvider("claude-sonnet-4-5", api_key="sk-ant-test",
                             base_url=server.anthropic_url, retry=FAST, options=options)


def provider_for(api: str, server: FakeLLMServer) -> OpenAIProvider | AnthropicProvider:
    return openai_provider(server) if api == "openai" else anthropic_provider(server)


# -- the output limit ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "override", "sent"), [
    ("openai", None, "max_completion_tokens"),
    ("openai-compatible", None, "max_tokens"),
    ("openai", "max_tokens", "max_tokens"),
    ("openai-compatible", "max_completion_tokens", "max_completion_tokens"),
])
def test_output_limit_parameter_per_provider_kind(server: FakeLLMServer, kind: OpenAIKind,
                                                  override: Any, sent: str) -> None:
    server.queue_openai(text="ok")
    provider = openai_provider(server, kind, options=ProviderOptions(
        output_limit_parameter=override))
    provider.complete("SYSTEM", GO, TOOLS, max_output_tokens=321)
    body = server.openai_requests[0].body
    assert body[sent] == 321
    other = {"max_tokens", "max_completion_tokens"} - {sent}
    assert not other & body.keys()


def test_make_provider_openai_compatible_sends_max_tokens(server: FakeLLMServer) -> None:
    server.queue_openai(text="ok")
    provider = make_provider(f"openai-compatible:{server.openai_url}:local/model", retry=FAST,
                             options=ProviderOptions(max_output_tokens=777))
    provider.complete("SYSTEM", GO, TOOLS)  # no explicit limit: the options'
    body = server.openai_requests[0].body
    assert body["max_tokens"] == 777
    assert "max_completion_tokens" not in body


def test_the_options_limit_is_the_default_of_each_call(server: FakeLLMServer) -> None:
    server.queue_openai(text="ok")
    server.queue_anthropic(text="ok")
    options = ProviderOptions(max_output_tokens=1234)
    openai_provider(server, options=options).complete("S", GO, TOOLS)
    anthropic_provider(server, options=options).complete("S", GO, TOOLS)
    assert server.openai_requests[0].body["max_completion_tokens"] == 1234
    assert server.anthropic_requests[0].body["max_tokens"] == 1234  # always max_tokens


def test_default_options() -> None:
    options = ProviderOptions()
    assert (options.output_limit_parameter, options.max_output_tokens, options.context_window,
            options.system_prompt) == (None, 4096, None, "blocks")
    with pytest.raises(ValidationError):
        ProviderOptions(max_output_tokens=0)
    with pytest.raises(ValidationError):
        ProviderOptions(output_limit_parameter="max_new_tokens")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ProviderOptions.model_validate({"context_windw": 8192})  # a typo is an error


# -- the Anthropic system prompt ------------------------------------------------------------------


def test_anthropic_system_prompt_blocks_by_default_and_plain_text_on_request(
        server: FakeLLMServer) -> None:
    server.queue_anthropic(text="ok")
    server.queue_anthropic(text="ok")
    anthropic_provider(server).complete("SYSTEM", GO, TOOLS)
    anthropic_provider(server, ProviderOptions(system_prompt="text")).complete("SYSTEM", GO, TOOLS)
    blocks, text = (r.body for r in server.anthropic_requests)
    assert blocks["system"] == [{"type": "text", "text": "SYSTEM",
                                 "cache_control": {"type": "ephemeral"}}]
    assert blocks["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert text["system"] == "SYSTEM"
    assert all("cache_control" not in tool for tool in text["tools"])  # no cache blocks at all
    assert text["messages"] == blocks["messages"]


# -- context-length errors ------------------------------------------------------------------------

CONTEXT_ERRORS = [
    pytest.param("openai", 400, {"message": "This model's maximum context length is 8192 tokens. "
                                 "However, your messages resulted in 8227 tokens. Please reduce "
                                 "the length of the messages.",
                                 "code": "context_length_exceeded"}, 8192, 8227, id="openai"),
    pytest.param("openai", 400, {"message": "This model's maximum context length is 2048 tokens. "
                                 "However, you requested 2100 tokens (100 in the messages, 2000 in "
                                 "the completion).", "error_type": "BadRequestError"},
                 2048, 100, id="vllm"),  # the prompt: 100 in the messages
    pytest.param("openai", 400, {"message": "request (4476 tokens) exceeds the available context "
                                 "size (4096 tokens)", "error_type": "exceed_context_size_error",
                                 "code": 400,
                                 "error_fields": {"n_prompt_tokens": 4476, "n_ctx": 4096}},
                 4096, 4476, id="llama.cpp"),
    pytest.param("openai", 400, {"message": "Requested tokens (9000) exceed context window of "
                                 "8192"}, 8192, 9000, id="llama-cpp-python"),
    pytest.param("openai", 400, {"message": "too many tokens in the request"}, None, None,
                 id="no-numbers"),
    pytest.param("anthropic", 400, {"message": "prompt is too long: 209353 tokens > 200000 "
                                    "maximum"}, 200000, 209353, id="anthropic"),
    pytest.param("anthropic", 500, {"message": "litellm.ContextWindowExceededError: "
                                    "AnthropicError - prompt is too long: 9,000 tokens > 8,192 "
                                    "maximum"}, 8192, 9000, id="litellm-500"),
]


@pytest.mark.parametrize(("api", "status", "fields", "limit", "requested"), CONTEXT_ERRORS)
def test_context_length_error_is_typed_and_not_retried(server: FakeLLMServer, api: str,
                                                       status: int, fields: dict[str, Any],
                                                       limit: int | None,
                                                       requested: int | None) -> None:
    server.queue(api, FakeReply(status=status, **fields))  # type: ignore[arg-type]
    server.queue(api, FakeReply(text="never reached"))  # type: ignore[arg-type]
    with pytest.raises(ContextLengthError) as caught:
        provider_for(api, server).complete("SYSTEM", GO, TOOLS)
    error = caught.value
    assert len(server.requests) == 1
    assert (error.status, error.retryable) == (status, False)
    assert (error.limit, error.requested) == (limit, requested)
    assert "exceeds the context window" in str(error)
    assert "attempts" not in str(error)


def test_other_client_errors_are_not_context_errors(server: FakeLLMServer) -> None:
    server.queue_openai_error(400, "Invalid value for 'tools': too long a name")
    server.queue_openai_error(429, "Too many tokens per minute: limit 30000")  # load, not context
    server.queue_openai(text="ok")
    provider = openai_provider(server)
    with pytest.raises(ProviderError) as caught:
        provider.complete("S", GO, TOOLS)
    assert not isinstance(caught.value, ContextLengthError)
    assert provider.complete("S", GO, TOOLS).attempts == 2  # the 429 is retried


# -- 5xx that call the request invalid -------------------------------------------------------------

INVALID_500S = [
    pytest.param({"error_type": "invalid_request_error", "message": "system: Input should be a "
                  "valid string"}, id="type-invalid-request"),
    pytest.param({"error_type": "BadRequestError", "message": "upstream refused"},
                 id="type-bad-request"),
    pytest.param({"message": "litellm.BadRequestError: OpenAIException - Error code: 400 - "
                  "messages[0].content must be a string"}, id="litellm-message"),
    pytest.param({"message": "1 validation error for ChatCompletionRequest"},
                 id="validation-error"),
    pytest.param({"message": "Invalid request: unknown field"}, id="invalid-request"),
]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("fields", INVALID_500S)
def test_500_with_an_invalid_request_body_is_not_retried(server: FakeLLMServer, api: str,
                                                         fields: dict[str, Any]) -> None:
    server.queue(api, FakeReply(status=500, **fields))  # type: ignore[arg-type]
    server.queue(api, FakeReply(text="never reached"))  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as caught:
        provider_for(api, server).complete("SYSTEM", GO, TOOLS)
    assert len(server.requests) == 1
    assert (caught.value.status, caught.value.retryable) == (500, False)
    assert not isinstance(caught.value, ContextLengthError)
    assert "request is invalid (not retried)" in str(caught.value)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_plain_500_is_still_retried(server: FakeLLMServer, api: str) -> None:
    server.queue(api, FakeReply(status=500, message="The server had an error while processing "  # type: ignore[arg-type]
                                "your request."))
    server.queue(api, FakeReply(text="ok"))  # type: ignore[arg-type]
    completion = provider_for(api, server).complete("SYSTEM", GO, TOOLS)
    assert (completion.text, completion.attempts, len(server.requests)) == ("ok", 2, 2)


# -- context windows: the model table and the options ----------------------------------------------


def test_known_context_window_from_the_model_table() -> None:
    assert known_context_window("openai", "gpt-5") == 400_000
    assert known_context_window("openai", "gpt-5-mini") == 400_000
    assert known_context_window("openai", "gpt-4.1") == 1_047_576
    assert known_context_window("openai", "gpt-4.1-mini") == 1_047_576
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"):
        assert known_context_window("anthropic", model) == 200_000
    assert known_context_window("openai", "some-unlisted-model") is None
    assert known_context_window("openai-compatible", "gpt-5") is None  # a kind has its own section
    assert known_context_window("heuristic", "offline-baseline-v3") is None


@pytest.fixture
def own_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "prices.yaml"
    monkeypatch.setenv("ADL_PRICES", str(path))
    model_table.cache_clear()
    yield path
    model_table.cache_clear()  # the next test reads the packaged table again


def test_a_model_with_only_a_context_window_costs_unknown(own_table: Path) -> None:
    own_table.write_text("openai-compatible:\n  local/qwen: {context_window: 32768}\n"
                         "openai:\n  priced: {input: 1.0, output: 2.0}\n")
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert known_context_window("openai-compatible", "local/qwen") == 32768
    assert cost_usd("openai-compatible", "local/qwen", usage) is None
    assert cost_usd("openai", "priced", usage) == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)
    assert known_context_window("openai", "priced") is None


@pytest.mark.parametrize("entry", ["{input: 1.0}", "{cached_input: 0.1, context_window: 10}",
                                   "{context_window: 0}", "{context_windows: 8192}"])
def test_a_malformed_model_entry_is_refused(own_table: Path, entry: str) -> None:
    own_table.write_text(f"openai:\n  m: {entry}\n")
    with pytest.raises(ValidationError):
        model_table()


def test_provider_context_window_prefers_the_options(server: FakeLLMServer) -> None:
    small = ProviderOptions(context_window=8192)
    assert openai_provider(server).context_window == 400_000
    assert openai_provider(server, options=small).context_window == 8192
    assert openai_provider(server, "openai-compatible", "local/model").context_window is None
    assert openai_provider(server, "openai-compatible", "local/model",
                           options=small).context_window == 8192
    assert anthropic_provider(server).context_window == 200_000
    assert anthropic_provider(server, small).context_window == 8192
    assert HeuristicProvider().context_window is None
    assert HeuristicProvider(options=small).context_window == 8192
    assert ScriptedProvider([]).context_window is None
    assert ScriptedProvider([], options=small).context_window == 8192


def test_make_provider_passes_the_options(server: FakeLLMServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    options = ProviderOptions(context_window=16_384, system_prompt="text")
    for spec in ("heuristic", "anthropic:claude-sonnet-4-5",
                 f"openai-compatible:{server.openai_url}:m"):
        provider = make_provider(spec, options=options)
        assert provider.options == options
        assert provider.context_window == 16_384
    assert make_provider("heuristic").options == ProviderOptions()


# -- options from the eval config and the CLI ------------------------------------------------------


def test_eval_config_applies_provider_options_to_every_provider(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from evals import runs

    config = runs.EvalConfig.model_validate({
        "name": "local", "organisms": ["cake_bake"], "providers": ["heuristic", "openai:gpt-5"],
        "provider_options": {"output_limit_parameter": "max_tokens", "max_output_tokens": 1024,
                             "context_window": 8192, "system_prompt": "text"}})
    assert runs.EvalConfig(name="x", organisms=["cake_bake"]).provider_options == ProviderOptions()
    assert config.public_dump()["provider_options"] == {
        "output_limit_parameter": "max_tokens", "max_output_tokens": 1024,
        "context_window": 8192, "system_prompt": "text"}
    made: list[tuple[str, ProviderOptions | None]] = []

    def fake_make(spec: str, retry: Any = None, options: ProviderOptions | None = None) -> Any:
        made.append((spec, options))
        return SimpleNamespace(name=spec, is_llm=spec != "heuristic")

    monkeypatch.setattr(runs, "make_provider", fake_make)
    taken = SimpleNamespace(start_unit=lambda *args, **kwargs: None)  # another runner holds it
    grid_run = runs.GridRun(config, Path(), taken, 1, None)  # type: ignore[arg-type]
    for unit in runs.grid(config):
        assert grid_run.run_unit(unit, None) == "elsewhere"  # type: ignore[arg-type]
    assert {spec for spec, _ in made} == {"heuristic", "openai:gpt-5"}
    assert all(options == config.provider_options for _, options in made)


class _Stop(Exception):
    pass


def _agent_run(monkeypatch: pytest.MonkeyPatch, *flags: str) -> tuple[Any, list[ProviderOptions]]:
    from evals.cli import agent, app

    seen: list[ProviderOptions] = []

    def fake_make(spec: str, retry: Any = None, options: ProviderOptions | None = None) -> Any:
        seen.append(options)  # type: ignore[arg-type]
        return SimpleNamespace(name=spec, is_llm=True)

    def stop(*args: Any) -> Any:
        raise _Stop

    monkeypatch.setattr(agent, "make_provider", fake_make)
    monkeypatch.setattr(agent, "connect", stop)
    result = CliRunner().invoke(app, ["agent", "run", "cake_bake", "--provider", "x", *flags])
    return result, seen


def test_agent_run_options(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = _agent_run(monkeypatch, "--max-output-tokens", "512", "--context-window",
                              "8192", "--output-limit-parameter", "max_tokens", "--plain-system")
    assert isinstance(result.exception, _Stop), result.output
    assert seen == [ProviderOptions(max_output_tokens=512, context_window=8192,
                                    output_limit_parameter="max_tokens", system_prompt="text")]
    result, seen = _agent_run(monkeypatch)
    assert seen == [ProviderOptions()]


def test_agent_run_refuses_an_unknown_output_limit_parameter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = _agent_run(monkeypatch, "--output-limit-parameter", "max_new_tokens")
    assert result.exit_code != 0
    assert seen == []
    assert "max_completion_tokens or max_tokens" in (result.output + str(result.exception))
