"""Evaluation grids on a Ray cluster (`executor: ray`, `adl eval run CONFIG --ray`).

- Each organism's model worker is a Ray actor around the same `AdlService` as in process. Its
  resources (CPUs, GPUs, memory, custom resources for placement) come from the config's
  `ray.worker` / `ray.workers`. An actor is created when its organism's lane starts and killed
  when the organism's units are done; actors that do not fit yet wait in Ray's queue.
- Each unit's agent runs as a Ray task (no CPU reserved: it waits on an API or on the actor)
  with the same toolbox and loop as in process; it reaches the worker through the actor handle
  (`ActorWorkerClient`). A limit per provider kind caps the units running at once.
- The driver is the only writer of the store and of transcripts: the task streams each event
  line to the driver as it happens (a Ray streaming generator), and the driver appends it to
  `results/transcripts/<experiment>/<unit>.attempt<N>.jsonl`. Nodes need no shared filesystem.
- Faults: a worker actor that dies is restarted by Ray (`ray.max_worker_restarts`); a unit whose
  worker died or restarted while it ran, or whose task died, is run again as a new attempt (up
  to `ray.max_attempts`), each attempt keeping its transcript. A driver killed mid-grid resumes
  on the next run as in process (the store holds each unit once).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import queue
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ValidationError
from ray.exceptions import RayActorError, RayError, RayTaskError
from rich.progress import Progress, TaskID

from agent.loop import Budgets, investigate
from agent.providers import ProviderOptions, make_provider, parse_provider_spec
from agent.providers.base import Provider
from agent.transcript import EventSink, RunOutcome, TranscriptWriter, parse_event
from evals.runs import (
    AttemptFailedError,
    EvalConfig,
    ExecutorOutcome,
    GridRun,
    RayWorker,
    Unit,
    WorkerPlacement,
)
from evals.workers import OwnWorkerOptions
from tools.errors import AdlError, AdlInputError, WorkerUnavailableError
from tools.toolbox import AskSettings
from tools.url import redact_url
from tools.worker.schema import (
    ChatRequest,
    ChatResponse,
    GenerateSteeredRequest,
    Overview,
    ReadoutRequest,
    ReadoutResponse,
    SteeredSamplesRequest,
    SteeredSamplesResponse,
    WorkerConfig,
    WorkerInfo,
)

log = logging.getLogger(__name__)
# The service methods the actor answers (the `WorkerClient` protocol).
SERVICE_CALLS = frozenset({"info", "chat", "readouts", "steered_samples", "generate_steered", "overview"})


class WorkerActor:
    """One organism's worker on the cluster: an `AdlService` (loaded once; its ADL and steering
    come from the node's cache or are computed there). Torch uses the actor's CPU share."""

    def __init__(self, organism: str, worker_config: WorkerConfig | None, profile: str,
                 size: str, threads: int, options: OwnWorkerOptions | None = None) -> None:
        from tools.machine import set_torch_threads
        from tools.worker.service import AdlService

        self.threads = set_torch_threads(threads)
        self.organism = organism
        self.incarnation = uuid.uuid4().hex  # a new one after every restart
        if worker_config is None:
            from evals.workers import organism_worker_config

            worker_config = organism_worker_config(
                organism, profile, size=size, options=options)  # type: ignore[arg-type]
        self.service = AdlService.start(worker_config, show_progress=False)

    def placement(self) -> WorkerPlacement:
        context = ray.get_runtime_context()
        return WorkerPlacement(organism=self.organism, node_id=context.get_node_id(),
                               node_ip=ray.util.get_node_ip_address(), hostname=socket.gethostname(),
                               pid=os.getpid(), threads=self.threads,
                               gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    def call(self, method: str, request: BaseModel | None = None) -> tuple[str, BaseModel]:
        """The service's answer to `method(request)`, with this incarnation's id."""
        if method not in SERVICE_CALLS:
            raise AdlInputError(f"The worker actor has no call {method!r}.")
        handler = getattr(self.service, method)
        return self.incarnation, handler(request) if request is not None else handler()


class ActorWorkerClient:
    """The `WorkerClient` of a unit whose worker is an actor. An actor that died, or that
    restarted since this client's first call, raises `WorkerUnavailableError`: the loop ends
    the run (`worker_unavailable`) and the driver runs the unit again as a new attempt."""

    def __init__(self, actor: Any, organism: str) -> None:
        self._actor = actor
        self._organism = organism
        self._incarnation: str | None = None

    def _call(self, method: str, request: BaseModel | None = None) -> Any:
        try:
            incarnation, answer = ray.get(self._actor.call.remote(method, request))
        except RayTaskError as exc:  # the service raised: the same error as in process
            cause = exc.cause
            if isinstance(cause, AdlError | ValidationError):
                raise cause from None
            raise AdlError(f"The worker of {self._organism} failed: {exc}") from exc
        except RayActorError as exc:
            raise WorkerUnavailableError(f"The worker actor of {self._organism} died "
                                         f"({type(exc).__name__}).") from exc
        if self._incarnation is None:
            self._incarnation = incarnation
        elif incarnation != self._incarnation:
            raise WorkerUnavailableError(f"The worker actor of {self._organism} restarted during "
                                         "this run.")
        return answer

    def info(self) -> WorkerInfo:
        return self._call("info")

    def chat(self, request: ChatRequest) -> ChatResponse:
        return self._call("chat", request)

    def readouts(self, request: ReadoutRequest) -> ReadoutResponse:
        return self._call("readouts", request)

    def steered_samples(self, request: SteeredSamplesRequest) -> SteeredSamplesResponse:
        return self._call("steered_samples", request)

    def generate_steered(self, request: GenerateSteeredRequest) -> SteeredSamplesResponse:
        return self._call("generate_steered", request)

    def overview(self) -> Overview:
        return self._call("overview")


def unit_events(actor: Any, unit: Unit, options: ProviderOptions, budgets: Budgets,
                ask: AskSettings, metadata: dict[str, Any]) -> Iterator[str | RunOutcome]:
    """A unit's agent run on a cluster node: each transcript line as it is written, then the
    outcome (a Ray streaming generator; the loop runs in a thread that feeds it)."""
    lines: queue.Queue[str | None] = queue.Queue()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            provider = make_provider(unit.provider, options=options)
            result["outcome"] = investigate(ActorWorkerClient(actor, unit.organism), provider,
                                            unit.agent, budgets, EventSink(lines.put), metadata,  # type: ignore[arg-type]
                                            ask=ask)
        except BaseException as exc:  # noqa: BLE001 - raised in the generator below
            result["error"] = exc
        finally:
            lines.put(None)

    threading.Thread(target=work, name=f"adl-unit-{unit.file_stem}", daemon=True).start()
    while (line := lines.get()) is not None:
        yield line
    if "error" in result:
        raise result["error"]
    yield result["outcome"]


_unit_task = ray.remote(num_returns="streaming", max_retries=0)(unit_events)
_worker_actor = ray.remote(WorkerActor)


class _Lanes:
    """The driver's state: one lane per organism (its actor and units), per-provider limits,
    per-node progress counts."""

    def __init__(self, grid_run: GridRun, todo: list[Unit], progress: Progress, task: TaskID) -> None:
        self.grid_run, self.config = grid_run, grid_run.config
        self.progress, self.task = progress, task
        self.todo = todo
        kinds = {parse_provider_spec(u.provider).kind for u in todo}
        self.limits = {kind: threading.BoundedSemaphore(
            self.config.ray.provider_concurrency.get(kind, self.config.concurrency)) for kind in kinds}
        self.lock = threading.Lock()
        self.per_node: Counter[str] = Counter()
        self.result = ExecutorOutcome()
        self.env = {name: os.environ[name] for name in self.config.ray.pass_env if name in os.environ}

    def run(self) -> ExecutorOutcome:
        organisms = [o for o in self.config.organisms if any(u.organism == o for u in self.todo)]
        by_url = sorted(set(organisms) & set(self.config.workers))
        if by_url:
            raise AdlInputError(f"On Ray every organism's worker is an actor; `workers:` URLs are "
                                f"for the local executor (given for {by_url}). Use "
                                "worker_configs or ray.workers instead.")
        specs = {o: self.config.worker_config(o) for o in organisms}  # bad YAML: before any actor
        _check_feasible({o: self.config.ray.worker_for(o) for o in organisms})
        with concurrent.futures.ThreadPoolExecutor(max(1, len(organisms)),
                                                   thread_name_prefix="adl-lane") as lanes:
            futures = [lanes.submit(self.lane, o, specs[o]) for o in organisms]
            for future in futures:
                future.result()
        return self.result

    def lane(self, organism: str, worker_config: WorkerConfig | None) -> None:
        """Start the organism's actor, run its units, then release the actor."""
        mine = [u for u in self.todo if u.organism == organism]
        worker = self.config.ray.worker_for(organism)
        actor = _worker_actor.options(
            name=f"adl-worker-{self.config.name}-{organism}-{uuid.uuid4().hex[:8]}",
            num_cpus=worker.num_cpus, num_gpus=worker.num_gpus,
            memory=int(worker.memory_gb * 2**30) if worker.memory_gb else None,
            resources=worker.resources or None, max_restarts=self.config.ray.max_worker_restarts,
            max_task_retries=0, max_concurrency=max(2, self.config.concurrency),
            runtime_env={"env_vars": self.env} if self.env else None,
        ).remote(organism, worker_config, self.config.profile, self.config.organism_size,
                 max(1, int(worker.num_cpus)), self.config.own_worker_options(worker.load_options()))
        try:
            try:
                placement = ray.get(actor.placement.remote())
            except RayError as exc:
                for unit in mine:
                    self._fail(unit, f"its worker could not start: {_cause(exc)}")
                return
            self._placed(placement)
            with concurrent.futures.ThreadPoolExecutor(self.config.concurrency,
                                                       thread_name_prefix="adl-unit") as pool:
                futures = {pool.submit(self._unit, unit, actor): unit for unit in mine}
                for future in concurrent.futures.as_completed(futures):
                    with self.lock:
                        self.result.settle(futures[future], future)
                        self.per_node[placement.node_id[:8]] += 1
                        self._describe()
                        self.progress.advance(self.task)
        finally:
            ray.kill(actor)

    def _placed(self, placement: WorkerPlacement) -> None:
        with self.lock:
            self.result.placements.append(placement)
            self.per_node.setdefault(placement.node_id[:8], 0)
            self._describe()
        gpus = f", GPUs {', '.join(placement.gpu_ids)}" if placement.gpu_ids else ""
        where = (f"worker {placement.organism}: node {placement.node_id[:8]} ({placement.node_ip}, "
                 f"host {placement.hostname}), pid {placement.pid}, {placement.threads} torch "
                 f"threads{gpus}")
        log.info("%s", where)  # `adl eval run` shows INFO lines (and writes them to its log)

    def _describe(self) -> None:
        nodes = ", ".join(f"node {node}: {count}" for node, count in sorted(self.per_node.items()))
        self.progress.update(self.task, description=f"{self.config.name} on Ray ({nodes})")

    def _fail(self, unit: Unit, reason: str) -> None:
        with self.lock:
            self.result.failed.append(f"{unit.key}: {reason}")
            self.progress.advance(self.task)
        log.error("unit %s failed: %s", unit.key, reason)

    def _unit(self, unit: Unit, actor: Any) -> str:
        with self.limits[parse_provider_spec(unit.provider).kind]:
            return self.grid_run.run_unit(unit, lambda *args: self._agent_run(actor, *args),
                                          max_attempts=self.config.ray.max_attempts)

    def _agent_run(self, actor: Any, unit: Unit, provider: Provider, path: Path, budgets: Budgets,
                   ask: AskSettings, metadata: dict[str, Any]) -> RunOutcome:
        """Run the unit's task; append each streamed line to the transcript at `path`."""
        events = _unit_task.options(num_cpus=0, runtime_env={"env_vars": self.env} if self.env else None,
                                    name=f"adl-unit:{unit.key}"[:200]).remote(
            actor, unit, self.config.provider_options, budgets, ask, metadata)
        with TranscriptWriter(path) as transcript:
            line_number = 0
            try:
                for ref in events:
                    item = ray.get(ref)
                    if isinstance(item, RunOutcome):
                        return item
                    line_number += 1
                    parse_event(json.loads(item), path, line_number)  # a line that is not an event: an error
                    transcript.append_line(item)
            except RayTaskError as exc:
                if isinstance(exc.cause, AdlError):  # the run's own error, as in process
                    raise exc.cause from None
                raise AttemptFailedError(f"its task failed: {_cause(exc)}") from exc
            except RayError as exc:  # the task's process or node died
                raise AttemptFailedError(f"its task died: {_cause(exc)}") from exc
        raise AttemptFailedError("its task ended without an outcome")


def run_on_ray(grid_run: GridRun, todo: list[Unit], progress: Progress, task: TaskID) -> ExecutorOutcome:
    """Run `todo` on the cluster of `grid_run.config.ray` (started here when no address is
    given; joined otherwise), then disconnect if this call connected."""
    if not todo:
        return ExecutorOutcome()
    connected = connect_ray(grid_run.config)
    try:
        return _Lanes(grid_run, todo, progress, task).run()
    finally:
        if connected:
            ray.shutdown()


def connect_ray(config: EvalConfig) -> bool:
    """Connect this driver to Ray (a new local cluster when `ray.address` is None); False when
    it already was connected."""
    if ray.is_initialized():
        return False
    address = config.ray.address
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False,
                 log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = redact_url(address) if address else "a new local cluster"
        raise AdlInputError(f"Cannot connect to Ray at {where}: {exc}") from exc
    resources = ray.cluster_resources()
    log.info("Ray: %s, %d nodes, %s CPUs, %s GPUs", redact_url(address) if address else "local cluster",
             len([n for n in ray.nodes() if n.get("Alive")]), resources.get("CPU", 0),
             resources.get("GPU", 0))
    return True


def _check_feasible(workers: dict[str, RayWorker]) -> None:
    """Refuse a worker no node of the cluster could ever host (it would wait forever)."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for organism, worker in workers.items():
        wanted = {"CPU": worker.num_cpus, "GPU": worker.num_gpus, **worker.resources}
        if worker.memory_gb:
            wanted["memory"] = worker.memory_gb * 2**30
        if not any(all(node.get(name, 0) >= amount for name, amount in wanted.items() if amount)
                   for node in nodes):
            shown = ", ".join(f"{k}={v:g}" for k, v in wanted.items() if v)
            raise AdlInputError(f"No node of the Ray cluster has the resources of {organism}'s "
                                f"worker ({shown}); set ray.worker or ray.workers.{organism} "
                                "to what the nodes offer (`ray status`).")


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    shown = cause if isinstance(cause, BaseException) else exc
    return f"{type(shown).__name__}: {str(shown).splitlines()[0] if str(shown) else ''}"
