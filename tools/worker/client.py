"""Talking to the worker: one `WorkerClient` protocol, served in-process by `AdlService` itself
and over HTTP by `HttpWorkerClient`. Both raise `ToolInputError` for bad arguments.

Every worker route is idempotent (the worker keeps no state between requests; sampling is
seeded), so the HTTP client sends a request once more when the connection breaks (reset,
closed keep-alive, refused). Only a worker that fails twice that way is reported unavailable.
A 503 `busy` answer (the worker's in-flight cap; the request was not started) is sent again
after its `Retry-After`, for up to `BUSY_ATTEMPTS` attempts.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from tools.errors import ToolInputError, WorkerRequestError, WorkerUnavailableError
from tools.net import parse_retry_after
from tools.worker.schema import (
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    GenerateSteeredRequest,
    Overview,
    ReadoutRequest,
    ReadoutResponse,
    SteeredSamplesRequest,
    SteeredSamplesResponse,
    WorkerInfo,
)

Response = TypeVar("Response", bound=BaseModel)
TOKEN_ENV = "ADL_WORKER_TOKEN"  # the worker's bearer token, on both sides
DEFAULT_PORT = 8765
# Connection-level failures after which a request is sent once more. Timeouts are not among
# them: the worker may still be working on the first attempt.
CONNECTION_BROKEN = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
CONNECTION_ATTEMPTS = 2
CONNECTION_RETRY_WAIT_S = 0.2
BUSY_ATTEMPTS = 60
MAX_BUSY_WAIT_S = 10.0


class _Busy(Exception):
    """A 503 `busy` answer, to be sent again after `retry_after` seconds."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__("busy")
        self.response = response
        wait = parse_retry_after(response.headers)
        self.retry_after = min(MAX_BUSY_WAIT_S, 1.0 if wait is None else wait)


class _Attempts:
    """Counts each kind of failure on its own: waiting out `busy` answers does not use up the
    resend after a broken connection, nor the other way round."""

    def __init__(self) -> None:
        self.busy = 0
        self.broken = 0

    def stop(self, state: RetryCallState) -> bool:
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, _Busy):
            self.busy += 1
            return self.busy >= BUSY_ATTEMPTS
        self.broken += 1
        return self.broken >= CONNECTION_ATTEMPTS


def _wait(state: RetryCallState) -> float:
    failure = state.outcome.exception() if state.outcome is not None else None
    return failure.retry_after if isinstance(failure, _Busy) else CONNECTION_RETRY_WAIT_S


class WorkerClient(Protocol):
    """What the toolbox needs from a worker."""

    def info(self) -> WorkerInfo: ...
    def chat(self, request: ChatRequest) -> ChatResponse: ...
    def readouts(self, request: ReadoutRequest) -> ReadoutResponse: ...
    def steered_samples(self, request: SteeredSamplesRequest) -> SteeredSamplesResponse: ...
    def generate_steered(self, request: GenerateSteeredRequest) -> SteeredSamplesResponse: ...
    def overview(self) -> Overview: ...


class HttpWorkerClient:
    """A worker process reached over HTTP (bearer token optional)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, response_model: type[Response],
              body: BaseModel | None = None) -> Response:
        payload = body.model_dump(mode="json") if body is not None else None

        def attempt() -> httpx.Response:
            response = self._http.request(method, path, json=payload)
            if response.status_code == 503 and _error_type(response) == "busy":
                raise _Busy(response)
            return response

        retrying = Retrying(stop=_Attempts().stop, wait=_wait, reraise=True,
                            retry=retry_if_exception_type((*CONNECTION_BROKEN, _Busy)))
        try:
            response = retrying(attempt)
        except _Busy as busy:
            response = busy.response
        except httpx.TransportError as exc:
            raise WorkerUnavailableError(
                f"The worker at {self.url} cannot be reached ({type(exc).__name__}: {exc}). "
                "Is it running? Start it with `adl worker serve`."
            ) from exc
        if response.status_code >= 400:
            raise _worker_error(response)
        try:
            return response_model.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise WorkerRequestError(f"The worker at {self.url} sent an unreadable answer: {exc}") from exc

    def health(self) -> dict[str, Any]:
        return self._send("GET", "/health", _Health).model_dump()

    def info(self) -> WorkerInfo:
        return self._send("GET", "/info", WorkerInfo)

    def chat(self, request: ChatRequest) -> ChatResponse:
        return self._send("POST", "/chat", ChatResponse, request)

    def readouts(self, request: ReadoutRequest) -> ReadoutResponse:
        return self._send("POST", "/readouts", ReadoutResponse, request)

    def steered_samples(self, request: SteeredSamplesRequest) -> SteeredSamplesResponse:
        return self._send("POST", "/steered-samples", SteeredSamplesResponse, request)

    def generate_steered(self, request: GenerateSteeredRequest) -> SteeredSamplesResponse:
        return self._send("POST", "/generate-steered", SteeredSamplesResponse, request)

    def overview(self) -> Overview:
        return self._send("GET", "/overview", Overview)


class _Health(BaseModel):
    status: str


def _error_type(response: httpx.Response) -> str | None:
    try:
        return ErrorResponse.model_validate(response.json()).error.type
    except (ValueError, ValidationError):
        return None


def _worker_error(response: httpx.Response) -> Exception:
    try:
        error = ErrorResponse.model_validate(response.json()).error
    except (ValueError, ValidationError):
        return WorkerRequestError(f"The worker answered HTTP {response.status_code}: "
                                  f"{response.text[:200]}", "http_error")
    if error.type == "invalid_argument":
        return ToolInputError(error.message, error.fields)
    return WorkerRequestError(f"The worker refused the request ({error.type}): {error.message}",
                              error.type, error.fields)


def wait_for_worker(url: str, timeout: float = 600.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Block until the worker at `url` answers /health; raise WorkerUnavailableError when
    `process` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise WorkerUnavailableError(f"The worker process exited with {process.returncode}.")
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise WorkerUnavailableError(f"The worker at {url} did not start within {timeout:.0f} s.")
        time.sleep(0.3)
