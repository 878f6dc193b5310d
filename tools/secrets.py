"""Keeping secrets out of everything written: transcripts, logs and error messages.

Every value of a known secret variable (API keys, the worker token) present in the environment,
key-shaped strings (`sk-...`, `hf_...`, `Bearer ...`) and URL credentials (`user:password@`,
`?key=...`) are replaced wherever text leaves the process through these helpers. Logging is
redacted by a formatter, so the formatted message, the traceback and the stack are all covered.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
from typing import Any

from tools.url import redact_url

SECRET_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_COMPATIBLE_API_KEY",
                    "ADL_WORKER_TOKEN", "HF_TOKEN")
REDACTED = "[REDACTED]"
_MIN_SECRET_LENGTH = 6
_KEY_SHAPED = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,})")
_BEARER = re.compile(r"\b(Bearer\s+)(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/-]{16,}=*")  # a token, not prose
# Loggers whose handlers are configured by libraries, not by basicConfig.
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def secret_values() -> list[str]:
    """The secrets set in the environment now (longest first)."""
    values = {os.environ.get(name, "") for name in SECRET_VARIABLES}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str, *extra: str | None) -> str:
    """`text` with every known secret value (and the `extra` ones), key-shaped strings and URL
    credentials replaced."""
    values = secret_values() + [v for v in extra if v and len(v) >= _MIN_SECRET_LENGTH]
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _KEY_SHAPED.sub(REDACTED, text)
    text = _BEARER.sub(rf"\1{REDACTED}", text)
    return redact_url(text)


class RedactingFormatter(logging.Formatter):
    """Formats like `inner` (default: `%(message)s`), then redacts the whole text: message,
    exception text and stack."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        return redact(self.inner.formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return redact(self.inner.formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact(self.inner.formatStack(stack_info))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.inner.formatTime(record, datefmt)

    def usesTime(self) -> bool:
        return self.inner.usesTime()


def redact_handler(handler: logging.Handler) -> None:
    """Make `handler` format through a RedactingFormatter around its formatter (idempotent)."""
    if not isinstance(handler.formatter, RedactingFormatter):
        handler.setFormatter(RedactingFormatter(handler.formatter))


def install_log_redaction() -> None:
    """Redact every handler of the root logger and of uvicorn's loggers (idempotent); call it
    again after adding handlers."""
    for name in ("", *LIBRARY_LOGGERS):
        for handler in logging.getLogger(name).handlers:
            redact_handler(handler)


def redacting_formatter(inner: str = "logging.Formatter", **options: Any) -> RedactingFormatter:
    """A `logging.config.dictConfig` factory (`"()"`): the formatter class `inner` built with
    `options`, redacting."""
    module, _, name = inner.rpartition(".")
    return RedactingFormatter(getattr(importlib.import_module(module), name)(**options))


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config with every formatter redacting: pass it as
    `uvicorn.Config(log_config=...)` / `uvicorn.run(log_config=...)`."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["inner"] = formatter.pop("()", "logging.Formatter")
        formatter["()"] = f"{__name__}.redacting_formatter"
    return config
