"""Typed errors of the agent side."""

from __future__ import annotations

from pathlib import Path

from tools.errors import AdlError


class ProviderConfigError(AdlError):
    """A provider spec is malformed, or its API key variable is not set."""


class ProviderError(AdlError):
    """A provider call failed (after retries, or with an error that is not retried)."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class ContextLengthError(ProviderError):
    """The server refused the request because the prompt does not fit the model's context
    window. Never retried as is: the conversation has to shrink first. `limit` (the window)
    and `requested` (the tokens the request would need) are read from the server's message
    when it gives them."""

    def __init__(self, message: str, *, status: int | None = None, limit: int | None = None,
                 requested: int | None = None) -> None:
        super().__init__(message, retryable=False, status=status)
        self.limit = limit
        self.requested = requested


class TranscriptFormatError(AdlError):
    """A transcript line is not an event of this version (an old or foreign file): the message
    names the file, the line (1-based) and the fields at fault (`field`: the first). `where`
    replaces file and line for events read from elsewhere (a run's stored rows)."""

    def __init__(self, path: Path | None, line: int | None, field: str, problems: str, *,
                 where: str | None = None) -> None:
        self.where = where or f"{path}, line {line}"
        super().__init__(f"{self.where}: not a transcript event of this version: {problems}")
        self.path = path
        self.line = line
        self.field = field
        self.problems = problems

    def brief(self) -> str:
        """The message with the file's name only, not its folders (for pages others may see)."""
        where = self.where if self.path is None else f"{self.path.name}, line {self.line}"
        return f"{where}: not a transcript event of this version: {self.problems}"
