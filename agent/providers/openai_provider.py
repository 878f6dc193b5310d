"""OpenAI (and any OpenAI-compatible server) through the Chat Completions API.

The SDK's own retries are off (`max_retries=0`): `agent.retry.with_retries` is the one policy.
SDK errors become `ProviderError`s marked retryable or not; messages never carry the API key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import openai

from agent.errors import ProviderError
from agent.pricing import cost_usd, known_context_window
from agent.providers.base import ChatTurn, Completion, ProviderOptions, ToolCall, Usage
from agent.providers.status import status_error
from agent.retry import RetryPolicy, with_retries
from tools.secrets import redact
from tools.toolbox import ToolSpec
from tools.url import public_url, split_query

OpenAIKind = Literal["openai", "openai-compatible"]
DEFAULT_TIMEOUT_S = 600.0
RETRYABLE_4XX = {408, 429}  # request timeout, rate limit
NOT_RETRYABLE_429_CODES = {"insufficient_quota"}  # billing, not load: waiting will not help
# OpenAI reads max_completion_tokens (max_tokens is deprecated and refused by reasoning models);
# compatible servers (llama.cpp, vLLM, LiteLLM, OpenRouter) read max_tokens.
OUTPUT_LIMIT_PARAMETERS: dict[str, str] = {"openai": "max_completion_tokens",
                                           "openai-compatible": "max_tokens"}


def to_chat_messages(system: str, messages: list[ChatTurn]) -> list[dict[str, Any]]:
    """Provider-neutral turns as Chat Completions messages (system message first)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for turn in messages:
        if turn.role == "user":
            out.append({"role": "user", "content": turn.content})
        elif turn.role == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": turn.content or None}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": call.arguments}}
                    for call in turn.tool_calls]
            elif not turn.content:
                message["content"] = ""
            out.append(message)
        else:
            if not turn.tool_call_id:
                raise ProviderError("a tool turn has no tool_call_id: cannot send it to the model")
            out.append({"role": "tool", "tool_call_id": turn.tool_call_id,
                        "content": turn.content})
    return out


def to_chat_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as Chat Completions function tools."""
    return [{"type": "function",
             "function": {"name": t.name, "description": t.description,
                          "parameters": t.parameters}}
            for t in tools]


class OpenAIProvider:
    """A chat model behind the OpenAI Chat Completions API, with native tool calls."""

    is_llm = True

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None,
                 retry: RetryPolicy | None = None, kind: OpenAIKind = "openai",
                 timeout: float = DEFAULT_TIMEOUT_S, options: ProviderOptions | None = None) -> None:
        self.model = model
        self.kind: OpenAIKind = kind
        self.options = options or ProviderOptions()
        self.base_url = base_url
        self.retry = retry
        self.name = f"openai-compatible:{public_url(base_url or '')}:{model}" \
            if kind == "openai-compatible" else f"openai:{model}"
        self._api_key = api_key
        # The SDK appends paths to the base URL: a query (?key=...) must travel separately.
        base, query = split_query(base_url) if base_url else (None, {})
        self._client = openai.OpenAI(api_key=api_key, base_url=base, default_query=query or None,
                                     max_retries=0, timeout=timeout)

    @property
    def context_window(self) -> int | None:
        """The options' context window, else the model table's, else None (unknown)."""
        return self.options.context_window or known_context_window(self.kind, self.model)

    @property
    def output_limit_parameter(self) -> str:
        """The request field that carries the output limit (see `ProviderOptions`)."""
        return self.options.output_limit_parameter or OUTPUT_LIMIT_PARAMETERS[self.kind]

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int | None = None) -> Completion:
        """One completion under the shared retry policy; raises ProviderError when it fails
        (`ContextLengthError` when the prompt does not fit). `max_output_tokens` None: the
        options' limit."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": to_chat_messages(system, messages),
            self.output_limit_parameter: max_output_tokens or self.options.max_output_tokens,
        }
        if tools:
            request["tools"] = to_chat_tools(tools)
        response, attempts = with_retries(lambda: self._call(request), self.retry)
        return self._completion(response, attempts)

    def _call(self, request: dict[str, Any]) -> Any:
        try:
            return self._client.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise self._provider_error(exc) from None

    def _completion(self, response: Any, attempts: int) -> Completion:
        if not response.choices:
            raise ProviderError(f"{self.name}: the response has no choices")
        choice = response.choices[0]
        message = choice.message
        calls: list[ToolCall] = []
        for call in message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is not None:
                calls.append(ToolCall(id=call.id, name=function.name,
                                      arguments=function.arguments or ""))
            else:  # a custom (free-text) tool call
                custom = getattr(call, "custom", None)
                calls.append(ToolCall(id=call.id, name=getattr(custom, "name", ""),
                                      arguments=getattr(custom, "input", "") or ""))
        usage = Usage()
        if response.usage is not None:
            details = getattr(response.usage, "prompt_tokens_details", None)
            usage = Usage(input_tokens=response.usage.prompt_tokens or 0,
                          output_tokens=response.usage.completion_tokens or 0,
                          cached_input_tokens=getattr(details, "cached_tokens", None) or 0)
        return Completion(text=message.content or "", tool_calls=calls, usage=usage,
                          cost_usd=cost_usd(self.kind, self.model, usage),
                          model=response.model or self.model, stop_reason=choice.finish_reason,
                          attempts=attempts,
                          raw=response.model_dump(mode="json", warnings=False))

    def _provider_error(self, exc: openai.OpenAIError) -> ProviderError:
        """The SDK error as a ProviderError, retryable for load, server and network failures."""
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(f"{self.name}: request timed out", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            detail = redact(str(exc), self._api_key)
            return ProviderError(f"{self.name}: connection error: {detail}", retryable=True)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status in (401, 403):
                variable = ("OPENAI_API_KEY" if self.kind == "openai"
                            else "OPENAI_COMPATIBLE_API_KEY")
                what = "authentication failed" if status == 401 else "permission denied"
                return ProviderError(f"{self.name}: {what} (HTTP {status}): check {variable}",
                                     status=status)
            body = exc.body if isinstance(exc.body, Mapping) else {}
            message = str(body.get("message") or exc.message)
            code = body.get("code") or body.get("type")
            retryable = status >= 500 or (status in RETRYABLE_4XX
                                          and code not in NOT_RETRYABLE_429_CODES)
            return status_error(self.name, status, redact(message, self._api_key),
                                texts=[message, body.get("type"), body.get("code")],
                                fields=body, retryable=retryable, headers=exc.response.headers)
        return ProviderError(f"{self.name}: {type(exc).__name__}: "
                             f"{redact(str(exc), self._api_key)}")
