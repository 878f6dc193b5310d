"""The one provider interface: a chat completion with native tool calls.

Messages are provider-neutral (`ChatTurn`); each backend converts them to its wire format and
back. Backends never retry on their own: `agent.retry.with_retries` is the one retry policy.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field

from agent.briefing import Briefing
from tools.toolbox import ToolSpec


class ToolCall(BaseModel):
    """A tool call requested by the model; `arguments` is the raw JSON text it produced."""

    id: str
    name: str
    arguments: str


class ChatTurn(BaseModel):
    """One message of the conversation.

    user: `content`. assistant: `content` (may be empty) and `tool_calls`.
    tool: the result of the call `tool_call_id` in `content`, `is_error` when it failed.
    The first user turn also carries its facts as a `Briefing` (never sent, never dumped)."""

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False
    briefing: Briefing | None = Field(None, exclude=True, description="The first message's "
                                      "budget and first look as data (for non-LLM policies).")


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


OutputLimitParameter = Literal["max_completion_tokens", "max_tokens"]
OUTPUT_LIMIT_PARAMETERS: tuple[OutputLimitParameter, ...] = get_args(OutputLimitParameter)


class ProviderOptions(BaseModel):
    """How to talk to one provider's endpoint; the same for every kind unless a field says not.

    The defaults suit OpenAI and Anthropic themselves; local and proxied servers (llama.cpp,
    vLLM, LiteLLM, OpenRouter) may need `output_limit_parameter`, `context_window` or
    `system_prompt="text"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_limit_parameter: OutputLimitParameter | None = Field(
        None, description="The request field of the output limit (OpenAI kinds). None: "
        "max_completion_tokens for openai, max_tokens for openai-compatible (what llama.cpp, "
        "vLLM, LiteLLM and OpenRouter read). Anthropic always sends max_tokens.")
    max_output_tokens: int = Field(4096, ge=1, description="The output limit of each agent call.")
    context_window: int | None = Field(None, ge=1, description="The model's context window in "
                                       "tokens; None: the model table's, else unknown.")
    system_prompt: Literal["blocks", "text"] = Field(
        "blocks", description="Anthropic only: blocks sends the system prompt as content blocks "
        "with cache_control (prompt caching); text sends a plain string and no cache "
        "breakpoints (for proxies such as LiteLLM and servers that need it).")


class Provider(Protocol):
    """A chat model with native tool calling."""

    name: str  # the spec string, e.g. "openai:gpt-5"
    model: str
    is_llm: bool  # False for the heuristic baseline policy
    options: ProviderOptions

    @property
    def context_window(self) -> int | None:
        """The context window in tokens: the options', else the model table's, else None."""
        ...

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int | None = None) -> Completion:
        """One completion (retried by the shared policy); raises ProviderError when it fails.
        `max_output_tokens` None: `options.max_output_tokens`."""
        ...
