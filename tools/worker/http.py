"""The worker over HTTP: a FastAPI app around `AdlService`, bearer-token auth, and `serve`.

Bound to loopback by default. Bound anywhere else it refuses to start without a token (at
least 32 characters), and with one every route except `/health` answers 401 unless the request
carries `Authorization: Bearer <token>`; auth is checked before the body is read. The Host
header must name the bound address (loopback names by default: a DNS-rebinding page gets
400). At most `max_in_flight` requests are served at once, the rest get 503 with
`Retry-After`; `/health` runs on the event loop and never waits on the model. A client that
hangs up has its queued model work dropped. Every error, an internal one included, is an
`ErrorResponse` naming the problem, and the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tools.errors import AdlError, AdlInputError
from tools.net import LOOPBACK_HOST_NAMES, allowed_host_names, is_loopback
from tools.secrets import redact, uvicorn_log_config
from tools.validation import validation_problems
from tools.worker.client import DEFAULT_PORT, TOKEN_ENV
from tools.worker.queue import (
    REQUEST_CANCELLED,
    RequestCancelledError,
    WorkerBusyError,
    WorkerStoppingError,
)
from tools.worker.schema import (
    ChatRequest,
    ChatResponse,
    ErrorBody,
    ErrorResponse,
    GenerateSteeredRequest,
    Overview,
    ReadoutRequest,
    ReadoutResponse,
    SteeredSamplesRequest,
    SteeredSamplesResponse,
    WorkerInfo,
)
from tools.worker.service import AdlService

log = logging.getLogger(__name__)
MIN_TOKEN_CHARS = 32
OPEN_PATHS = frozenset({"/health"})  # no token, no in-flight slot
DISCONNECT_POLL_S = 0.25
RETRY_AFTER_S = 1
T = TypeVar("T")
R = TypeVar("R")


class WorkerAuthError(AdlError):
    """The worker would be reachable from other machines without a token."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a bearer token, and any token that is too short."""
    if not is_loopback(host) and not token:
        raise WorkerAuthError(
            f"Refusing to serve on {host} without a token: the worker would be open to the "
            f"network. Set {TOKEN_ENV}, or bind to 127.0.0.1."
        )
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise WorkerAuthError(
            f"{TOKEN_ENV} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(for example: openssl rand -hex 32)."
        )


def _error(status: int, error_type: str, message: str, fields: list[str] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(type=error_type, message=message, fields=fields or []))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class BodySizeLimit:
    """Refuses request bodies above `max_bytes` with 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body up to the limit first (streamed bodies have no declared length), then
        # replay it to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, "too_large", f"The request body is larger than {self.max_bytes} bytes.")
        await response(scope, receive, send)


class BearerAuth:
    """Answers 401 to any request but `/health` without the bearer token, before the body is
    read or validated (constant-time comparison)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            response = _error(401, "unauthorized", "Missing or wrong bearer token.",
                              headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class InFlightLimit:
    """Serves at most `max_in_flight` requests at once (every path but `/health`); the rest get
    503 with `Retry-After` at once instead of waiting on the thread pool."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            response = _error(503, "busy", f"The worker is serving {self.in_flight} requests, its "
                              f"limit; retry in {RETRY_AFTER_S} s.",
                              headers={"Retry-After": str(RETRY_AFTER_S)})
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class InternalErrorGuard:
    """Turns an unexpected exception into a 500 `ErrorResponse` and keeps the connection open.

    (Starlette's own last-resort handler re-raises after answering, and uvicorn then closes the
    connection: the client's next call on it fails as if the worker were gone.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # every internal error becomes a 500 reply
            log.exception("request %s failed", scope.get("path"))
            if started:  # nothing else can be sent on this response
                return
            response = _error(500, "internal", redact(f"Internal error ({type(exc).__name__}): {exc}"))
            await response(scope, receive, send)


async def _served(request: Request, cancel_pending: Callable[[], None],
                  function: Callable[[T], R], argument: T) -> R:
    """Run `function(argument)` on the thread pool; if the client hangs up first, its queued
    model jobs are dropped (they are never run) and the request ends as cancelled."""
    cancelled = threading.Event()
    context_token = REQUEST_CANCELLED.set(cancelled)
    try:  # the task copies the context: jobs it queues carry `cancelled`
        work = asyncio.ensure_future(run_in_threadpool(function, argument))
    finally:
        REQUEST_CANCELLED.reset(context_token)
    while True:
        done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if done:
            return work.result()
        if await request.is_disconnected():
            cancelled.set()
            cancel_pending()
            log.info("client of %s disconnected: its queued model work was dropped",
                     request.url.path)
            with contextlib.suppress(Exception):
                await work  # a job already running finishes; the thread is then free
            raise RequestCancelledError("The client disconnected.")


def create_app(service: AdlService, token: str | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_HOST_NAMES) -> FastAPI:
    """The FastAPI app serving `service`; with `token`, routes other than /health need it.
    `allowed_hosts` are the accepted Host header names (`allowed_host_names`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        rejected = service.close()
        log.info("worker stopped (%d queued jobs rejected)", rejected)

    # The API description is served only without a token (loopback): it needs no auth itself.
    docs: dict[str, Any] = {} if token is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="adl-agent worker", lifespan=lifespan, **docs)
    # Outermost last: Host check, auth, body size, in-flight cap, internal-error guard.
    app.add_middleware(InternalErrorGuard)
    app.add_middleware(InFlightLimit, max_in_flight=service.limits.max_in_flight)
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_request_bytes)
    if token is not None:
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, fields = validation_problems(exc, whole="body", skip=("body",))
        return _error(422, "invalid_argument", problems, fields)

    @app.exception_handler(AdlInputError)
    async def _bad_input(request: Request, exc: AdlInputError) -> JSONResponse:
        return _error(400, "invalid_argument", str(exc), getattr(exc, "fields", []))

    @app.exception_handler(WorkerBusyError)
    async def _busy(request: Request, exc: WorkerBusyError) -> JSONResponse:
        return _error(503, "busy", str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(WorkerStoppingError)
    async def _stopping(request: Request, exc: WorkerStoppingError) -> JSONResponse:
        return _error(503, "stopping", str(exc))

    @app.exception_handler(RequestCancelledError)
    async def _cancelled(request: Request, exc: RequestCancelledError) -> JSONResponse:
        return _error(499, "cancelled", str(exc))  # nobody reads it: the client is gone

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}")

    def serve_call(request: Request, function: Callable[[T], R], argument: T) -> Any:
        return _served(request, service.queue.drop_cancelled, function, argument)

    @app.get("/health")
    async def health() -> dict[str, str]:
        # On the event loop: answers while every thread waits on the model.
        return {"status": "stopping" if service.stopping else "ok"}

    @app.get("/info")
    async def info(request: Request) -> WorkerInfo:
        return await serve_call(request, lambda _: service.info(), None)

    @app.post("/chat")
    async def chat(body: ChatRequest, request: Request) -> ChatResponse:
        return await serve_call(request, service.chat, body)

    @app.post("/readouts")
    async def readouts(body: ReadoutRequest, request: Request) -> ReadoutResponse:
        return await serve_call(request, service.readouts, body)

    @app.post("/steered-samples")
    async def steered_samples(body: SteeredSamplesRequest, request: Request) -> SteeredSamplesResponse:
        return await serve_call(request, service.steered_samples, body)

    @app.post("/generate-steered")
    async def generate_steered(body: GenerateSteeredRequest, request: Request) -> SteeredSamplesResponse:
        return await serve_call(request, service.generate_steered, body)

    @app.get("/overview")
    async def overview(request: Request) -> Overview:
        return await serve_call(request, lambda _: service.overview(), None)

    return app


def serve(
    service_factory: Callable[[], AdlService],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    extra_host_names: Sequence[str] = (),
) -> None:
    """Check the bind, build the service (models, ADL), then serve until SIGINT/SIGTERM.
    Shutdown lets running requests finish (up to 30 s) and rejects queued work after that.
    `extra_host_names` are further Host header names to accept (`allowed_host_names`)."""
    check_bind(host, token)
    service = service_factory()
    app = create_app(service, token, allowed_host_names(host, extra_host_names))
    config = uvicorn.Config(app, host=host, port=port, log_level="info", log_config=uvicorn_log_config(),
                            timeout_graceful_shutdown=30, access_log=False)
    server = uvicorn.Server(config)
    log.info("worker serving %s on http://%s:%d (auth: %s)", service.config.label, host, port,
             "bearer token" if token else "none, loopback only")
    server.run()
