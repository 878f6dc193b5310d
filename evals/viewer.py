"""`adl view`: a read-only web viewer of the results store.

Pages: the experiments (`/`), one experiment's comparison table, paired differences, plot and
runs (`/experiments/{name}`), and one run's header, grades and transcript (`/runs/{id}`, and
`/runs/{id}.json`). Only GET is answered (anything else is 405).

Transcripts hold model output, which is untrusted HTML: every template is autoescaped, and a
strict Content-Security-Policy forbids scripts outright (the pages need none; tool calls fold
with native `<details>`). Bound to loopback unless `allow_remote=True`: the viewer has no auth.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from agent.errors import TranscriptFormatError
from agent.transcript import MessageData, ToolCallData
from evals.compare import (
    ALL_ORGANISMS,
    SUCCESS_GRADE,
    Comparison,
    compare_experiment,
    plot_comparison,
)
from evals.store import Experiment, Grade, Run, Store
from tools.errors import AdlError
from tools.net import LOOPBACK_HOST_NAMES, allowed_host_names, is_loopback
from tools.secrets import uvicorn_log_config

log = logging.getLogger(__name__)

DEFAULT_PORT = 8766
TEMPLATES = Path(__file__).parent / "templates"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
READ_METHODS = frozenset({"GET"})
HEURISTIC_LABEL = "not an LLM: offline heuristic baseline policy"
PLOT_CACHE_SIZE = 16


class ViewerBindError(AdlError):
    """The viewer would be reachable from other machines without `allow_remote`."""


def check_host(host: str, allow_remote: bool = False) -> None:
    """Refuse a non-loopback bind unless `allow_remote` is set."""
    if not is_loopback(host) and not allow_remote:
        raise ViewerBindError(
            f"Refusing to serve the viewer on {host!r}: it has no authentication and shows every "
            "stored transcript. Bind to 127.0.0.1 (the default), or pass allow_remote=True "
            "(--allow-remote) if other machines on this network may read the results."
        )


# -- formatting (Jinja filters) -------------------------------------------------------------


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _when(value: dt.datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty_json(value: Any) -> str:
    """JSON text or data, indented; a plain string that is not JSON is shown as it is."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
        if isinstance(value, str):
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _url_part(value: Any) -> str:
    return quote(str(value), safe="")


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=_number, cost=_cost, percent=_percent, when=_when,
                       pretty_json=_pretty_json, url_part=_url_part)
    env.globals.update(heuristic_label=HEURISTIC_LABEL, success_grade=SUCCESS_GRADE)
    return env


def provider_label(run: Run) -> str | None:
    """The note shown next to a provider that is not a language model."""
    if run.provider.startswith("heuristic"):
        return HEURISTIC_LABEL
    if not run.provider_is_llm:
        return "not an LLM"
    return None


def _transcript(items: list[MessageData | ToolCallData]) -> list[tuple[str, MessageData | ToolCallData]]:
    """The transcript's messages and tool calls (in order), each with the template's kind."""
    return [("message" if isinstance(item, MessageData) else "tool_call", item) for item in items]


def _pooled_last(rows: list[Any]) -> list[Any]:
    """Each organism's rows first, the rows pooling all organisms last (stable otherwise)."""
    return sorted(rows, key=lambda row: row.organism == ALL_ORGANISMS)


def _dump(rows: list[Any]) -> list[dict[str, Any]]:
    return [row.model_dump(mode="json") for row in rows]


class _PlotCache:
    """PNG bytes of recent comparisons (matplotlib is not thread-safe: one plot at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pngs: OrderedDict[str, bytes] = OrderedDict()

    def png(self, comparison: Comparison) -> bytes:
        key = hashlib.sha256(comparison.model_dump_json().encode()).hexdigest()
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return self._pngs[key]
            with tempfile.TemporaryDirectory(prefix="adl-view-") as folder:
                path = plot_comparison(comparison, Path(folder) / "plot.png")
                data = path.read_bytes()
            self._pngs[key] = data
            while len(self._pngs) > PLOT_CACHE_SIZE:
                self._pngs.popitem(last=False)
            return data


# -- the app --------------------------------------------------------------------------------


def create_viewer_app(store: Store, allowed_hosts: Sequence[str] = LOOPBACK_HOST_NAMES) -> FastAPI:
    """The read-only viewer of `store` (GET only). Requests whose Host header is not in
    `allowed_hosts` get 400: a DNS-rebinding page cannot read the transcripts."""
    env = _environment()
    plots = _PlotCache()
    app = FastAPI(title="adl view", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)

    def page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**context), status_code=status_code)

    def not_found(message: str) -> HTMLResponse:
        return page("error.html", status_code=404, title="Not found", message=message)

    @app.middleware("http")
    async def read_only_and_headers(request: Request, call_next: Any) -> Response:
        if request.method not in READ_METHODS:
            response: Response = PlainTextResponse(
                "405 Method Not Allowed: the viewer is read-only.", status_code=405,
                headers={"Allow": "GET"})
        else:
            response = await call_next(request)
        for header, value in SECURITY_HEADERS.items():
            response.headers[header] = value
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return not_found(f"Nothing at {request.url.path}.")
        return PlainTextResponse(f"{exc.status_code} {exc.detail}", status_code=exc.status_code,
                                 headers=getattr(exc, "headers", None))

    def experiment_or_none(name: str) -> Experiment | None:
        return store.find_experiment(name)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)  # no icon; spares the browser a 404

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        rows = []
        for experiment in store.experiments():
            runs = store.runs(experiment.id)  # type: ignore[arg-type]
            rows.append({"experiment": experiment, "total": len(runs),
                         "finished": sum(run.status == "finished" for run in runs)})
        return page("index.html", title="Experiments", rows=rows)

    # The plot route comes first: `{name:path}` would otherwise swallow "/plot.png".
    @app.get("/experiments/{name:path}/plot.png")
    def experiment_plot(name: str) -> Response:
        if experiment_or_none(name) is None:
            return not_found(f"No experiment named {name!r}.")
        comparison = compare_experiment(store, name)
        if not comparison.cells:
            return not_found(f"Experiment {name!r} has no finished, graded runs to plot yet.")
        return Response(plots.png(comparison), media_type="image/png",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/experiments/{name:path}", response_class=HTMLResponse)
    def experiment_page(name: str) -> HTMLResponse:
        experiment = experiment_or_none(name)
        if experiment is None:
            return not_found(f"No experiment named {name!r}.")
        comparison = compare_experiment(store, name)
        runs = store.runs(experiment.id)  # type: ignore[arg-type]
        grades: dict[int, Grade | None] = {run.id: store.current_grade(run.id) for run in runs}  # type: ignore[misc]
        return page("experiment.html", title=f"Experiment {name}", experiment=experiment,
                    comparison=comparison, cells=_pooled_last(comparison.cells),
                    differences=_pooled_last(comparison.differences), runs=runs, grades=grades,
                    plot_url=f"/experiments/{_url_part(name)}/plot.png")

    # The JSON route comes first: "/runs/7.json" must not reach the HTML route.
    @app.get("/runs/{run_id:int}.json")
    def run_json(run_id: int) -> Response:
        run = store.run(run_id)
        if run is None:
            return JSONResponse({"error": f"No run {run_id}."}, status_code=404)
        return JSONResponse({
            "run": run.model_dump(mode="json"),
            "messages": _dump(store.messages(run_id)),
            "tool_calls": _dump(store.tool_calls(run_id)),
            "usage": _dump(store.usage(run_id)),
            "grades": _dump(store.grades(run_id)),
        })

    @app.get("/runs/{run_id:int}", response_class=HTMLResponse)
    def run_page(run_id: int) -> HTMLResponse:
        run = store.run(run_id)
        if run is None:
            return not_found(f"No run {run_id}.")
        experiment = next((e for e in store.experiments() if e.id == run.experiment_id), None)
        usage = store.usage(run_id)
        try:
            transcript, transcript_error = _transcript(store.transcript(run_id)), None
            started = store.run_started(run_id)
        except TranscriptFormatError as exc:  # the run is still shown, with the reason
            transcript, transcript_error = [], exc.brief()  # no folders of the runner's disk
            started = None
        return page("run.html", title=f"Run {run_id}", run=run, experiment=experiment,
                    provider_note=provider_label(run), grades=store.grades(run_id),
                    models=sorted({u.model for u in usage if u.model}),
                    worker=started.worker if started is not None else None,
                    transcript=transcript, transcript_error=transcript_error)

    return app


def serve_viewer(store: Store, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 allow_remote: bool = False, extra_host_names: Sequence[str] = ()) -> None:
    """Serve the viewer until interrupted; a non-loopback `host` needs `allow_remote=True`.
    `extra_host_names` are further Host header names to accept (`allowed_host_names`)."""
    check_host(host, allow_remote)
    app = create_viewer_app(store, allowed_host_names(host, extra_host_names))
    shown = f"[{host}]" if ":" in host else host
    log.info("viewer on http://%s:%d (read-only; Ctrl-C stops it)", shown, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                log_config=uvicorn_log_config())
