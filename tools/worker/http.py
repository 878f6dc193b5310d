"""The worker over HTTP: a FastAPI app around `AdlService`, bearer-token auth, and `serve`.

Bound to loopback by default. Bound anywhere else it refuses to start without a token, and
with one every route except `/health` answers 401 unless the request carries
`Authorization: Bearer <token>`. Every error is an `ErrorResponse` naming the problem.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tools.errors import AdlError, AdlInputError
from tools.net import is_loopback
from tools.worker.queue import WorkerBusyError, WorkerStoppingError
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
TOKEN_ENV = "ADL_WORKER_TOKEN"
DEFAULT_PORT = 8765


class WorkerAuthError(AdlError):
    """The worker would be reachable from other machines without a token."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a bearer token."""
    if not is_loopback(host) and not token:
        raise WorkerAuthError(
            f"Refusing to serve on {host} without a token: the worker would be open to the "
            f"network. Set {TOKEN_ENV}, or bind to 127.0.0.1."
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


def _field_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location if part != "body")


def create_app(service: AdlService, token: str | None = None) -> FastAPI:
    """The FastAPI app serving `service`; with `token`, routes other than /health need it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        rejected = service.close()
        log.info("worker stopped (%d queued jobs rejected)", rejected)

    # The API description is served only without a token (loopback): it needs no auth itself.
    docs: dict[str, Any] = {} if token is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="adl-agent worker", lifespan=lifespan, **docs)
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_request_bytes)

    async def authorize(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return _error(401, "unauthorized", "Missing or wrong bearer token.",
                      headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_field_path(e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
        fields = [_field_path(e["loc"]) for e in exc.errors() if _field_path(e["loc"])]
        return _error(422, "invalid_argument", "; ".join(problems), fields)

    @app.exception_handler(AdlInputError)
    async def _bad_input(request: Request, exc: AdlInputError) -> JSONResponse:
        return _error(400, "invalid_argument", str(exc), getattr(exc, "fields", []))

    @app.exception_handler(WorkerBusyError)
    async def _busy(request: Request, exc: WorkerBusyError) -> JSONResponse:
        return _error(503, "busy", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(WorkerStoppingError)
    async def _stopping(request: Request, exc: WorkerStoppingError) -> JSONResponse:
        return _error(503, "stopping", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return _error(500, "internal", f"{type(exc).__name__}: {exc}")

    auth = [Depends(authorize)]

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "stopping" if service.stopping else "ok"}

    @app.get("/info", dependencies=auth)
    def info() -> WorkerInfo:
        return service.info()

    @app.post("/chat", dependencies=auth)
    def chat(request: ChatRequest) -> ChatResponse:
        return service.chat(request)

    @app.post("/readouts", dependencies=auth)
    def readouts(request: ReadoutRequest) -> ReadoutResponse:
        return service.readouts(request)

    @app.post("/steered-samples", dependencies=auth)
    def steered_samples(request: SteeredSamplesRequest) -> SteeredSamplesResponse:
        return service.steered_samples(request)

    @app.post("/generate-steered", dependencies=auth)
    def generate_steered(request: GenerateSteeredRequest) -> SteeredSamplesResponse:
        return service.generate_steered(request)

    @app.get("/overview", dependencies=auth)
    def overview() -> Overview:
        return service.overview()

    return app


class _Unauthorized(Exception):
    pass


def serve(
    service_factory: Callable[[], AdlService],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
) -> None:
    """Check the bind, build the service (models, ADL), then serve until SIGINT/SIGTERM.
    Shutdown lets running requests finish (up to 30 s) and rejects queued work after that."""
    check_bind(host, token)
    service = service_factory()
    app = create_app(service, token)
    from agent.secrets import uvicorn_log_config  # uvicorn's handlers redact secrets too

    config = uvicorn.Config(app, host=host, port=port, log_level="info", log_config=uvicorn_log_config(),
                            timeout_graceful_shutdown=30, access_log=False)
    server = uvicorn.Server(config)
    log.info("worker serving %s on http://%s:%d (auth: %s)", service.config.label, host, port,
             "bearer token" if token else "none, loopback only")
    server.run()
