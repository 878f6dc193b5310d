"""What an HTTP error answer says, read the same way for every backend.

Two answers are not what their status suggests:
- a context-length error (OpenAI `context_length_exceeded`, vLLM's "maximum context length",
  llama.cpp's `exceed_context_size_error`, Anthropic's "prompt is too long"): a
  `ContextLengthError`, never retried as is (the conversation has to shrink first);
- a 5xx whose body says the request itself was invalid (a proxy such as LiteLLM answers an
  upstream 400 with a 500): not retried, since sending it again cannot help.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agent.errors import ContextLengthError, ProviderError
from tools.net import parse_retry_after

CONTEXT_STATUSES = {400, 413, 422}  # and any 5xx (a proxy may wrap the upstream 400)
CONTEXT_MARKERS = re.compile(
    r"context_length_exceeded|exceed_context_size|ContextWindowExceeded|context length"
    r"|too many tokens|exceeds? (?:the )?(?:available )?context|prompt is too long", re.IGNORECASE)
# On a 5xx only unambiguous markers count ("too many tokens in batch" may be a transient overload).
CONTEXT_MARKERS_5XX = re.compile(
    r"context_length_exceeded|exceed_context_size|ContextWindowExceeded|maximum context length"
    r"|prompt is too long", re.IGNORECASE)
LIMIT_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"context (?:size|window|length)(?: of| is)? \(?(\d[\d,]*)",  # OpenAI, vLLM, llama.cpp
    r"(\d[\d,]*) maximum",  # Anthropic: "prompt is too long: 209353 tokens > 200000 maximum"
)]
REQUESTED_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    # The prompt's own size first: "you requested 9120 tokens (5024 in the messages, 4096 in
    # the completion)" counts the output limit too.
    r"(\d[\d,]*) (?:tokens )?in the messages",
    r"resulted in (\d[\d,]*) tokens", r"requested (\d[\d,]*) tokens",
    r"request has (\d[\d,]*) input tokens", r"request \((\d[\d,]*) tokens\)",
    r"too long: (\d[\d,]*) tokens", r"requested tokens \((\d[\d,]*)\)",  # llama-cpp-python
)]
INVALID_REQUEST = re.compile(
    r"invalid_request_error|BadRequestError|invalid request|validation error|ValidationError",
    re.IGNORECASE)


def _first_number(patterns: list[re.Pattern[str]], text: str) -> int | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return int(found.group(1).replace(",", ""))
    return None


def _int_field(fields: Mapping[str, Any], name: str) -> int | None:
    value = fields.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_context_length(status: int, texts: list[Any]) -> bool:
    """Whether an error answer says the prompt does not fit the context window."""
    if status not in CONTEXT_STATUSES and status < 500:
        return False
    markers = CONTEXT_MARKERS_5XX if status >= 500 else CONTEXT_MARKERS
    return any(markers.search(str(text)) for text in texts if text)


def context_numbers(message: str, fields: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(limit, requested) from llama.cpp's `n_ctx`/`n_prompt_tokens` or from the message."""
    limit = _int_field(fields, "n_ctx") or _first_number(LIMIT_PATTERNS, message)
    requested = (_int_field(fields, "n_prompt_tokens")
                 or _first_number(REQUESTED_PATTERNS, message))
    return limit, requested


def status_error(name: str, status: int, detail: str, *, texts: list[Any],
                 fields: Mapping[str, Any], retryable: bool, headers: Any) -> ProviderError:
    """An HTTP error answer as a ProviderError.

    `detail` is the server's message as it may be shown (redacted), `texts` what is read for
    the kind of error (message, error type, code), `fields` the error object of the body,
    `retryable` the backend's verdict from the status alone."""
    if is_context_length(status, texts):
        limit, requested = context_numbers(detail, fields)
        return ContextLengthError(f"{name}: HTTP {status}: the prompt exceeds the context window: "
                                  f"{detail}", status=status, limit=limit, requested=requested)
    if status >= 500 and any(INVALID_REQUEST.search(str(text)) for text in texts if text):
        return ProviderError(f"{name}: HTTP {status}: the server says the request is invalid "
                             f"(not retried): {detail}", status=status)
    retry_after = parse_retry_after(headers) if retryable else None
    return ProviderError(f"{name}: HTTP {status}: {detail}", retryable=retryable, status=status,
                         retry_after=retry_after)
