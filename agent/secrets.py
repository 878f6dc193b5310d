"""Keeping secrets out of everything written: transcripts, logs and error messages.

Every value of a known secret variable (API keys, the worker token) present in the environment
is replaced by `[REDACTED]` wherever text leaves the process through these helpers.
"""

from __future__ import annotations

import logging
import os

SECRET_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_COMPATIBLE_API_KEY",
                    "ADL_WORKER_TOKEN", "HF_TOKEN")
REDACTED = "[REDACTED]"
_MIN_SECRET_LENGTH = 6


def secret_values() -> list[str]:
    """The secrets set in the environment now (longest first)."""
    values = {os.environ.get(name, "") for name in SECRET_VARIABLES}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str, *extra: str | None) -> str:
    """`text` with every known secret value (and the `extra` ones) replaced."""
    values = secret_values() + [v for v in extra if v and len(v) >= _MIN_SECRET_LENGTH]
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from formatted records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Redact secrets in every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
