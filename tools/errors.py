"""Typed errors for things that can go wrong at run time (bad input, missing assets, full disk)."""

from __future__ import annotations


class AdlError(Exception):
    """Base class of every error adl-agent raises on purpose; its message is shown to the user."""


class UnknownModelError(AdlError):
    """A model name is neither an offline short name, a local folder, nor a hub id."""


class ModelLoadError(AdlError):
    """A model, tokenizer or adapter exists by name but could not be loaded."""


class BackendUnsupportedError(ModelLoadError):
    """A model backend cannot run this model faithfully (an architecture it does not know, or
    one whose adapter layers it would not run)."""


class AssetMissingError(AdlError):
    """An offline asset package (model or corpus) is not installed."""


class CacheWriteError(AdlError):
    """A cache entry could not be written (for example: the disk is full)."""


class CorpusError(AdlError):
    """A corpus could not be read or is empty."""


class CheckpointError(AdlError):
    """A training checkpoint holds more than tensors and plain data (it could run code when
    unpickled), so it is not loaded."""


class OrganismConfigError(AdlError):
    """An organism YAML file is malformed; the message names the file and field."""


class UnknownOrganismError(AdlError):
    """No organism of that name is registered."""


class UngradedOrganismError(AdlError):
    """Something needs an organism's ground truth (grading, relevance) and it has none."""


class OrganismBuildError(AdlError):
    """An organism cannot be built (for example: it is declared by hub id, not built locally)."""


class AdlInputError(AdlError):
    """Bad ADL input: layer out of range, positions beyond the text, empty corpus, ..."""


class ToolInputError(AdlInputError):
    """A tool or worker request with bad arguments; `fields` names the arguments at fault."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class WorkerUnavailableError(AdlError):
    """The model worker cannot be reached (not started, killed, or the network failed)."""


class WorkerRequestError(AdlError):
    """The worker answered a request with an error (its type and message are kept)."""

    def __init__(self, message: str, error_type: str = "internal", fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.fields = fields or []


class ConcurrentModelUseError(AdlError):
    """A second thread called a model backend while it was running an operation (a backend is
    single-threaded: see `tools.backend`)."""
