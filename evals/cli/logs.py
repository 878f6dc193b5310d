"""Logging of the command line (and the benchmarks): Rich on a console, optionally a file, every
handler redacting secrets (`tools.secrets.RedactingFormatter`)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from tools.secrets import install_log_redaction

NOISY_LOGGERS = ("httpx", "urllib3", "transformers", "peft", "huggingface_hub", "alembic")


def configure_logging(console: Console, *, verbose: bool = False, log_file: Path | None = None) -> None:
    """Log to `console` (and append to `log_file`) through redacting formatters; quiet the
    chatty libraries. Model text in log messages is not read as Rich markup."""
    handlers: list[logging.Handler] = [RichHandler(console=console, show_path=False, markup=False)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=handlers)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()
