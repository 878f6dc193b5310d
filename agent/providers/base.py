"""The one provider interface: a chat completion with native tool calls.

Messages are provider-neutral (`ChatTurn`); each backend converts them to its wire format and
back. Backends never retry on their own: `agent.retry.with_retries` is the one retry policy.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from tools.toolbox import ToolSpec


class ToolCall(BaseModel):
    """A tool call requested by the model; `arguments` is the raw JSON text it produced."""

    id: str
    name: str
    arguments: str


class ChatTurn(BaseModel):
    """One message of the conversation.

    user: `content`. assistant: `content` (may be empty) and `tool_calls`.
    tool: the result of the call `tool_call_id` in `content`, `is_error` when it failed."""

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Completion(BaseModel):
    """One model answer: text and/or tool calls, usage and (when known) dollar cost."""

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Usage()
    cost_usd: float | None = Field(None, description="None when the model's price is unknown.")
    model: str
    stop_reason: str | None = None
    attempts: int = 1
    raw: dict[str, Any] | None = Field(None, exclude=True)


class Provider(Protocol):
    """A chat model with native tool calling."""

    name: str  # the spec string, e.g. "openai:gpt-5"
    model: str
    is_llm: bool  # False for the heuristic baseline policy

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int = 2048) -> Completion:
        """One completion (retried by the shared policy); raises ProviderError when it fails."""
        ...
