"""Anthropic through the Messages API, with prompt caching of the system prompt and tools.

The SDK's own retries are off (`max_retries=0`): `agent.retry.with_retries` is the one policy.
SDK errors become `ProviderError`s marked retryable or not; messages never carry the API key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anthropic

from agent.errors import ProviderError
from agent.pricing import cost_usd, known_context_window
from agent.providers.base import ChatTurn, Completion, ProviderOptions, ToolCall, Usage
from agent.providers.status import status_error
from agent.retry import RetryPolicy, with_retries
from tools.secrets import redact
from tools.toolbox import ToolSpec

DEFAULT_TIMEOUT_S = 600.0
EPHEMERAL = {"type": "ephemeral"}
RETRYABLE_4XX = {408, 429}  # request timeout, rate limit
# 429s that are about money, not load: waiting will not help.
NOT_RETRYABLE_429_CODES = {"contract_spend_limit_reached", "enforced_spend_limit_reached"}


def _tool_input(arguments: str) -> dict[str, Any]:
    """Stored raw arguments as a tool_use input; malformed JSON is kept under `_raw`."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def to_anthropic_messages(messages: list[ChatTurn]) -> list[dict[str, Any]]:
    """Provider-neutral turns as Messages API messages.

    Consecutive tool results (and a user turn right after them) form ONE user message, with the
    tool_result blocks first, as the API requires. Empty assistant turns are dropped."""
    out: list[dict[str, Any]] = []

    def add_user_blocks(blocks: list[dict[str, Any]]) -> None:
        last = out[-1] if out else None
        if last is not None and last["role"] == "user":
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            last["content"].extend(blocks)
        else:
            out.append({"role": "user", "content": blocks})

    for turn in messages:
        if turn.role == "user":
            if out and out[-1]["role"] == "user":
                add_user_blocks([{"type": "text", "text": turn.content}])
            else:
                out.append({"role": "user", "content": turn.content})
        elif turn.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if turn.content:
                blocks.append({"type": "text", "text": turn.content})
            blocks.extend({"type": "tool_use", "id": call.id, "name": call.name,
                           "input": _tool_input(call.arguments)} for call in turn.tool_calls)
            if blocks:
                out.append({"role": "assistant", "content": blocks})
        else:
            if not turn.tool_call_id:
                raise ProviderError("a tool turn has no tool_call_id: cannot send it to the model")
            add_user_blocks([{"type": "tool_result", "tool_use_id": turn.tool_call_id,
                              "content": turn.content, "is_error": turn.is_error}])
    return out


def to_anthropic_tools(tools: list[ToolSpec], cache: bool = True) -> list[dict[str, Any]]:
    """Tool specs as Messages API tools; with `cache`, the last one carries the cache
    breakpoint."""
    out: list[dict[str, Any]] = [
        {"name": t.name, "description": t.description, "input_schema": t.parameters}
        for t in tools]
    if out and cache:
        out[-1]["cache_control"] = dict(EPHEMERAL)
    return out


def to_anthropic_system(system: str, style: str) -> str | list[dict[str, Any]]:
    """The system prompt as content blocks with a cache breakpoint ("blocks"), or as the plain
    string ("text") that proxies and servers without prompt caching accept."""
    if style == "text":
        return system
    return [{"type": "text", "text": system, "cache_control": dict(EPHEMERAL)}]


class AnthropicProvider:
    """A Claude model behind the Anthropic Messages API, with native tool use."""

    is_llm = True
    kind = "anthropic"

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None,
                 retry: RetryPolicy | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 options: ProviderOptions | None = None) -> None:
        self.model = model
        self.options = options or ProviderOptions()
        self.name = f"anthropic:{model}"
        self.base_url = base_url
        self.retry = retry
        self._api_key = api_key
        # An explicit timeout also skips the SDK's "use streaming for long requests" guard.
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0,
                                           timeout=timeout)

    @property
    def context_window(self) -> int | None:
        """The options' context window, else the model table's, else None (unknown)."""
        return self.options.context_window or known_context_window(self.kind, self.model)

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int | None = None) -> Completion:
        """One completion under the shared retry policy; raises ProviderError when it fails
        (`ContextLengthError` when the prompt does not fit). `max_output_tokens` None: the
        options' limit."""
        style = self.options.system_prompt
        request: dict[str, Any] = {
            "model": self.model,
            "messages": to_anthropic_messages(messages),
            "max_tokens": max_output_tokens or self.options.max_output_tokens,
        }
        if system:
            request["system"] = to_anthropic_system(system, style)
        if tools:
            request["tools"] = to_anthropic_tools(tools, cache=style == "blocks")
        response, attempts = with_retries(lambda: self._call(request), self.retry)
        return self._completion(response, attempts)

    def _call(self, request: dict[str, Any]) -> Any:
        try:
            return self._client.messages.create(**request)
        except anthropic.AnthropicError as exc:
            raise self._provider_error(exc) from None

    def _completion(self, response: Any, attempts: int) -> Completion:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in response.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                # The API sends input as an object; a non-conforming server's string is kept.
                raw = block.input if isinstance(block.input, str) else json.dumps(block.input)
                calls.append(ToolCall(id=block.id, name=block.name, arguments=raw))
        u = response.usage
        cache_read = u.cache_read_input_tokens or 0
        cache_write = u.cache_creation_input_tokens or 0
        usage = Usage(input_tokens=(u.input_tokens or 0) + cache_read + cache_write,
                      output_tokens=u.output_tokens or 0, cached_input_tokens=cache_read,
                      cache_write_tokens=cache_write)
        return Completion(text="".join(texts), tool_calls=calls, usage=usage,
                          cost_usd=cost_usd(self.kind, self.model, usage),
                          model=response.model or self.model, stop_reason=response.stop_reason,
                          attempts=attempts,
                          raw=response.model_dump(mode="json", warnings=False))

    def _provider_error(self, exc: anthropic.AnthropicError) -> ProviderError:
        """The SDK error as a ProviderError, retryable for load, server and network failures."""
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderError(f"{self.name}: request timed out", retryable=True)
        if isinstance(exc, anthropic.APIConnectionError):
            detail = redact(str(exc), self._api_key)
            return ProviderError(f"{self.name}: connection error: {detail}", retryable=True)
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            if status in (401, 403):
                what = "authentication failed" if status == 401 else "permission denied"
                return ProviderError(
                    f"{self.name}: {what} (HTTP {status}): check ANTHROPIC_API_KEY", status=status)
            message = str(exc.api_message or exc.message)
            retryable = status >= 500 or (status in RETRYABLE_4XX
                                          and exc.error_code not in NOT_RETRYABLE_429_CODES)
            body = exc.body if isinstance(exc.body, Mapping) else {}
            error = body.get("error")
            fields = error if isinstance(error, Mapping) else body
            return status_error(self.name, status, redact(message, self._api_key),
                                texts=[message, getattr(exc, "type", None), exc.error_code,
                                       fields.get("code")],
                                fields=fields, retryable=retryable,
                                headers=exc.response.headers)
        return ProviderError(f"{self.name}: {type(exc).__name__}: "
                             f"{redact(str(exc), self._api_key)}")
