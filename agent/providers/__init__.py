"""Providers, chosen by one spec string; each backend module is imported only when used.

    openai:MODEL                        OpenAI (OPENAI_API_KEY; OPENAI_BASE_URL optional)
    anthropic:MODEL                     Anthropic (ANTHROPIC_API_KEY; ANTHROPIC_BASE_URL optional)
    openai-compatible:BASE_URL:MODEL    any OpenAI-compatible server (OpenRouter, vLLM, a local
                                        server); key from OPENAI_COMPATIBLE_API_KEY if set.
                                        The model is what follows the last colon.
    heuristic                           the offline non-LLM baseline policy (no key)
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel

from agent.errors import ProviderConfigError
from agent.providers.base import ChatTurn, Completion, Provider, ProviderOptions, ToolCall, Usage
from agent.retry import RetryPolicy
from tools.url import public_url, redact_url

__all__ = [
    "API_KEY_VARIABLES",
    "ChatTurn",
    "Completion",
    "Provider",
    "ProviderOptions",
    "ProviderSpec",
    "ToolCall",
    "Usage",
    "make_provider",
    "parse_provider_spec",
    "public_spec",
]

ProviderKind = Literal["openai", "anthropic", "openai-compatible", "heuristic"]
API_KEY_VARIABLES: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "openai-compatible": "OPENAI_COMPATIBLE_API_KEY",
}
HEURISTIC_MODEL = "offline-baseline-v3"
_NOT_IN_MODEL = "@?&=#"  # URL syntax: a spec whose "model" has these lacks its :MODEL


class ProviderSpec(BaseModel):
    kind: ProviderKind
    model: str
    base_url: str | None = None

    def __str__(self) -> str:
        if self.kind == "openai-compatible":
            return f"{self.kind}:{public_url(self.base_url or '')}:{self.model}"
        return f"{self.kind}:{self.model}"


def public_spec(spec: str) -> str:
    """`spec` as it may be stored, named in files and printed: an openai-compatible base URL
    without credentials (`user:password@`, secret query values become `***`); the same string
    when it has none, so stored unit keys stay stable. The calls use the real spec."""
    kind, _, rest = spec.partition(":")
    url, sep, model = rest.rpartition(":")
    if kind.strip() != "openai-compatible" or not sep or any(c in model for c in _NOT_IN_MODEL):
        return redact_url(spec)  # not URL:MODEL: redact it as text (may mask more)
    return f"{kind}:{redact_url(url)}:{model}"


def parse_provider_spec(spec: str) -> ProviderSpec:
    """'openai:gpt-5', 'anthropic:claude-sonnet-4-5', 'openai-compatible:URL:MODEL', 'heuristic'.
    Error messages show the spec without credentials."""
    kind, _, rest = spec.strip().partition(":")
    shown = public_spec(spec)
    if kind == "heuristic":
        return ProviderSpec(kind="heuristic", model=rest or HEURISTIC_MODEL)
    if kind in ("openai", "anthropic"):
        if not rest:
            raise ProviderConfigError(f"Provider spec {shown!r} names no model: use {kind}:MODEL.")
        return ProviderSpec(kind=kind, model=rest)  # type: ignore[arg-type]
    if kind == "openai-compatible":
        url, _, model = rest.rpartition(":")
        if (not url.startswith(("http://", "https://")) or not model or model.startswith("//")
                or any(c in model for c in _NOT_IN_MODEL)):
            raise ProviderConfigError(
                f"Provider spec {shown!r}: use openai-compatible:BASE_URL:MODEL, for example "
                "openai-compatible:http://localhost:8000/v1:Qwen/Qwen3-8B.")
        return ProviderSpec(kind="openai-compatible", model=model, base_url=url)
    raise ProviderConfigError(
        f"Unknown provider {kind!r} in {shown!r}; use openai:MODEL, anthropic:MODEL, "
        "openai-compatible:BASE_URL:MODEL or heuristic.")


def api_key(kind: str, *, required: bool = True) -> str | None:
    """The API key from its environment variable; a clear error names a missing one."""
    variable = API_KEY_VARIABLES[kind]
    value = os.environ.get(variable)
    if not value and required:
        raise ProviderConfigError(f"{variable} is not set: export it to use the {kind} provider.")
    return value or None


def make_provider(spec: str | ProviderSpec, retry: RetryPolicy | None = None,
                  options: ProviderOptions | None = None) -> Provider:
    """Build a provider from its spec, importing only that backend; `options` (output limit
    and its parameter, context window, system prompt style) default to `ProviderOptions()`."""
    parsed = spec if isinstance(spec, ProviderSpec) else parse_provider_spec(spec)
    if parsed.kind == "heuristic":
        from agent.providers.heuristic import HeuristicProvider

        return HeuristicProvider(parsed.model, options=options)
    if parsed.kind == "anthropic":
        from agent.providers.anthropic_provider import AnthropicProvider

        return AnthropicProvider(parsed.model, api_key=api_key("anthropic"),  # type: ignore[arg-type]
                                 base_url=os.environ.get("ANTHROPIC_BASE_URL"), retry=retry,
                                 options=options)
    from agent.providers.openai_provider import OpenAIProvider

    if parsed.kind == "openai":
        return OpenAIProvider(parsed.model, api_key=api_key("openai"),  # type: ignore[arg-type]
                              base_url=os.environ.get("OPENAI_BASE_URL"), retry=retry,
                              options=options)
    return OpenAIProvider(parsed.model, api_key=api_key("openai-compatible", required=False) or "none",
                          base_url=parsed.base_url, retry=retry, kind="openai-compatible",
                          options=options)
