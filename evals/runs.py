"""Evaluation grids: organisms x agents x budgets x repeats x providers, stored and graded.

`run_experiment(config)` is resumable: finished units are skipped, interrupted ones (left
`running` by a kill) are run again; each unit is stored exactly once. Several runners may work
on one experiment at once: a unit another live runner holds is left to it (see `evals.store`).
Every attempt writes its own transcript file (`transcripts/<experiment>/<unit>.attempt<N>.jsonl`),
so nothing written by an interrupted attempt is lost.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from agent.loop import Budgets, investigate
from agent.providers import ProviderOptions, make_provider, parse_provider_spec, public_spec
from agent.providers.base import Provider
from agent.transcript import RunOutcome
from evals.grading import HypothesisGrader, make_grader
from evals.organisms import get_organism
from evals.organisms.schema import OrganismSize
from evals.store import Grade, RunTakenOverError, Store, open_store
from evals.workers import AnalysisProfile, OwnWorkerOptions
from tools.config import load_yaml_model
from tools.errors import AdlError, AdlInputError, UnknownOrganismError, WorkerUnavailableError
from tools.model_spec import BackendName, LoadOptions
from tools.secrets import redact
from tools.toolbox import AGENT_KINDS, AskSettings
from tools.url import redact_url
from tools.worker.client import TOKEN_ENV, HttpWorkerClient
from tools.worker.schema import WorkerConfig

log = logging.getLogger(__name__)
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ExperimentNameError(AdlInputError, ValueError):
    """An experiment name that is not safe as a folder name (a ValueError, so pydantic
    validators report it as a field error)."""


def check_experiment_name(name: str) -> str:
    """`name` when it is safe as one folder name under the results folder: 1-100 letters,
    digits, '.', '_' or '-', starting with a letter or digit, without '..'."""
    if not EXPERIMENT_NAME.fullmatch(name) or ".." in name:
        raise ExperimentNameError(
            f"Experiment name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit, without '..' (it names folders under the "
            "results folder)."
        )
    return name


# Environment variables a Ray actor or task gets from the driver by default: where organisms
# are defined and cached, and whether the model hub may be reached. Never credentials.
PASSED_ENV = ("ADL_HOME", "ADL_ORGANISMS", "HF_HUB_OFFLINE", "HF_HOME")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


class RayWorker(BaseModel):
    """What one organism's worker actor reserves on the cluster, and which worker config it
    serves."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1, ge=0, le=4096, description="CPUs reserved; torch in the actor "
                            "uses this many threads (at least one).")
    num_gpus: float = Field(0, ge=0, le=256, description="GPUs reserved (fractions share one).")
    memory_gb: float | None = Field(None, gt=0, le=1_000_000, description="Memory reserved "
                                    "(Ray's `memory` resource, GB).")
    resources: dict[str, float] = Field(
        default_factory=dict, max_length=32, description="Custom resources for placement, as "
        "the nodes declare them (`ray start --resources '{\"big_gpu\": 1}'`).")
    load: LoadOptions | None = Field(None, description="How the actor loads the organism's pair "
                                     "(device, dtype, device_map). Default: `cuda` (dtype auto: "
                                     "bfloat16) when GPUs are reserved, else the CPU. A "
                                     "`worker_configs` YAML brings its own.")

    def load_options(self) -> LoadOptions | None:
        """The load options in effect (None: the organism's default, the CPU)."""
        if self.load is not None:
            return self.load
        return LoadOptions(device="cuda") if self.num_gpus > 0 else None


class RayOptions(BaseModel):
    """How a grid runs on Ray (`executor: ray`)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, max_length=1000, description="None: start a local Ray "
                                "cluster on this machine; 'auto': join the cluster this machine "
                                "belongs to; else a cluster address (host:6379 or "
                                "ray://host:10001).")
    worker: RayWorker = Field(default_factory=RayWorker, description="Every organism's worker.")
    workers: dict[str, RayWorker] = Field(default_factory=dict, description="Organism -> its "
                                          "worker, replacing `worker` for that organism.")
    provider_concurrency: dict[str, int] = Field(
        default_factory=dict, description="Provider kind (heuristic, openai, anthropic, "
        "openai-compatible) -> units running at once over the whole grid; default `concurrency`.")
    max_worker_restarts: int = Field(2, ge=0, le=100, description="Restarts of a worker actor "
                                     "that died.")
    max_attempts: int = Field(3, ge=1, le=20, description="Attempts of a unit in one run: a unit "
                              "whose worker or task died is run again as a new attempt.")
    pass_env: list[str] = Field(default_factory=lambda: list(PASSED_ENV), max_length=64,
                                description="Driver environment variables the actors and tasks "
                                "get (when set). Credentials are refused: nodes read API keys "
                                "from their own environment.")

    @field_validator("pass_env")
    @classmethod
    def _no_secrets(cls, names: list[str]) -> list[str]:
        secret = [name for name in names if _SECRET_NAME.search(name)]
        if secret:
            raise ValueError(f"{secret} look like credentials; set them in each node's own "
                             "environment instead of passing them from the driver")
        return names

    @field_validator("provider_concurrency")
    @classmethod
    def _positive(cls, limits: dict[str, int]) -> dict[str, int]:
        if any(limit < 1 for limit in limits.values()):
            raise ValueError("every provider_concurrency limit must be >= 1")
        return limits

    def worker_for(self, organism: str) -> RayWorker:
        return self.workers.get(organism, self.worker)


class WorkerPlacement(BaseModel):
    """Where an organism's worker actor runs (printed by `adl eval run --ray`)."""

    organism: str
    node_id: str
    node_ip: str
    hostname: str
    pid: int
    threads: int
    gpu_ids: list[str] = Field(default_factory=list)


class EvalConfig(BaseModel):
    """An experiment: the grid, the grader and how to reach the models."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    organisms: list[str] = Field(min_length=1)
    agents: list[str] = Field(default_factory=lambda: list(AGENT_KINDS), min_length=1)
    budgets: list[int] = Field(default_factory=lambda: [0, 5, 50], min_length=1)
    repeats: int = Field(1, ge=1)
    providers: list[str] = Field(default_factory=lambda: ["heuristic"], min_length=1)
    provider_options: ProviderOptions = Field(
        default_factory=ProviderOptions, description="How every provider of the grid is called: "
        "output limit per agent call and its parameter, context window, Anthropic system prompt "
        "style (see agent.providers.ProviderOptions).")
    grader: str = Field("offline", description="offline, or a provider spec for the LLM grader.")
    grader_repeats: int = Field(3, ge=1)
    profile: AnalysisProfile = "paper"
    organism_size: OrganismSize = Field("full", description="Build size of offline organisms "
                                        "served in-process: full, or small (fewer examples).")
    workers: dict[str, str] = Field(default_factory=dict, description="Organism -> worker URL "
                                    "(else $ADL_WORKER_URL, else an in-process worker).")
    steering_max_batch_size: int | None = Field(
        None, ge=1, le=4096, description="Rows per steering generate call of the organisms' own "
        "workers (in process or Ray actors; not those of `worker_configs` or `workers`). Default: "
        "the profile's, the reference's 32. A memory setting: on a GPU, 1024 makes every strength "
        "search step one call (an H200: one organism's paper-profile steering in 3.7 minutes "
        "instead of about 10); the samples are drawn anew, as from any other seed.")
    load: LoadOptions | None = Field(
        None, description="How the organisms' own in-process workers load their pair (device, "
        "dtype, device_map); default: the CPU. On a GPU machine: `{device: cuda}` (dtype auto: "
        "bfloat16). Ray actors take theirs from `ray.workers` (default: cuda when GPUs are "
        "reserved).")
    backend: BackendName = Field(
        "bridge", description="The model backend of the organisms' own workers (in process or "
        "Ray actors): bridge (transformer_lens) or hf-hooks (PyTorch forward hooks; no "
        "transformer_lens needed, e.g. on a GPU machine with a bare torch image).")
    worker_configs: dict[str, Path] = Field(
        default_factory=dict, description="Organism -> a worker config YAML (as for `adl worker "
        "serve --config`, labelled with the organism's name) served for it in process or as a "
        "Ray actor, instead of the organism's own (its build, `profile`, `organism_size`). On "
        "Ray, its paths are read on the actor's node.")
    concurrency: int = Field(4, ge=1, description="Units (API calls) running at the same time.")
    executor: Literal["local", "ray"] = Field("local", description="local: this process (workers "
                                              "in-process or by URL); ray: a Ray cluster (`ray:`).")
    ray: RayOptions = Field(default_factory=RayOptions)
    llm_calls: int = Field(100, ge=1)
    generated_tokens: int = Field(100_000, ge=1)
    wall_time_s: float = Field(1800, gt=0)
    ask_models: AskSettings = Field(default_factory=AskSettings, description="Sampling of "
                                    "ask_models, the same for both agents (the reference's "
                                    "defaults: temperature 0.8, 1024 new tokens).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_experiment_name(name)

    @field_validator("agents")
    @classmethod
    def _known_agents(cls, agents: list[str]) -> list[str]:
        unknown = sorted(set(agents) - set(AGENT_KINDS))
        if unknown:
            raise ValueError(f"unknown agents {unknown}; use {' and/or '.join(AGENT_KINDS)}")
        return agents

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets: list[int]) -> list[int]:
        if any(b < 0 for b in budgets):
            raise ValueError("budgets must be >= 0")
        return budgets

    @field_validator("providers")
    @classmethod
    def _providers(cls, providers: list[str]) -> list[str]:
        for spec in providers:
            parse_provider_spec(spec)
        return providers

    def public_dump(self) -> dict[str, Any]:
        """The config as stored: provider specs, the grader and worker URLs without credentials."""
        data = self.model_dump(mode="json")
        data["providers"] = [public_spec(p) for p in self.providers]
        data["grader"] = public_spec(self.grader)
        data["workers"] = {o: redact_url(u) for o, u in self.workers.items()}
        # Where the grid runs does not change the experiment: a grid started in process may be
        # resumed on Ray and the other way round.
        del data["executor"], data["ray"]
        # Experiments stored before these fields existed keep their config.
        if not self.worker_configs:
            del data["worker_configs"]
        for field, default in (("steering_max_batch_size", None), ("load", None),
                               ("backend", "bridge")):
            if data[field] == default:
                del data[field]
        return data

    def own_worker_options(self, load: LoadOptions | None = None) -> OwnWorkerOptions:
        """How the organisms' own workers run (`load`: a Ray actor's, instead of `self.load`)."""
        return OwnWorkerOptions(load=load or self.load, backend=self.backend,
                                steering_max_batch_size=self.steering_max_batch_size)

    def validate_organisms(self) -> None:
        for name in self.organisms:
            get_organism(name)
        for field, named in (("ray.workers", self.ray.workers), ("worker_configs", self.worker_configs)):
            unknown = sorted(set(named) - set(self.organisms))
            if unknown:
                raise AdlInputError(f"{field} names organisms that are not in the grid: {unknown}.")

    def worker_config(self, organism: str) -> WorkerConfig | None:
        """The worker config YAML named for `organism` in `worker_configs`, loaded (None when
        none is named); it must be labelled with the organism's name."""
        path = self.worker_configs.get(organism)
        if path is None:
            return None
        config = load_yaml_model(path, WorkerConfig, "worker config")
        if config.label != organism:
            raise AdlInputError(f"The worker config {path} is labelled {config.label!r}, not "
                                f"{organism!r} (worker_configs.{organism}).")
        return config


def load_eval_config(path: Path) -> EvalConfig:
    """An EvalConfig from YAML; errors name the file and the field (or the unknown organism)."""
    config = load_yaml_model(path, EvalConfig, "eval config")
    config.validate_organisms()
    return config


class Unit(BaseModel):
    """One grid cell; `provider` is the real spec (calls use it), `key` the public one."""

    organism: str
    agent: str
    budget: int
    repeat: int
    provider: str

    @property
    def key(self) -> str:
        return f"{self.organism}|{self.agent}|{self.budget}|{self.repeat}|{public_spec(self.provider)}"

    @property
    def file_stem(self) -> str:
        """The key as a file name; a key that had to be changed gets a short hash of itself, so
        two keys never share a transcript file (`a:b` and `a/b`)."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.key)
        if stem == self.key:
            return stem
        return f"{stem}-{hashlib.sha256(self.key.encode()).hexdigest()[:8]}"


def grid(config: EvalConfig) -> list[Unit]:
    """Every unit of the grid once, in order: a value listed twice (`budgets: [5, 5]`) adds no
    unit (two units with one key would both claim one run)."""
    units: dict[str, Unit] = {}
    for o in config.organisms:
        for p in config.providers:
            for b in config.budgets:
                for r in range(config.repeats):
                    for a in config.agents:
                        unit = Unit(organism=o, agent=a, budget=b, repeat=r, provider=p)
                        units.setdefault(unit.key, unit)
    return list(units.values())


class ExperimentSummary(BaseModel):
    experiment: str
    units: int
    skipped: int
    ran: int
    failed: list[str]
    elsewhere: int = Field(0, description="Units left to another live runner (or taken over by "
                           "one while this runner ran them).")
    placements: list[WorkerPlacement] = Field(default_factory=list, description="Where each "
                                              "worker actor ran (executor ray; one per start).")


class AgentRun(Protocol):
    """Runs one unit's agent with its transcript at `path` (in process, or as a Ray task whose
    events the driver writes to `path` as they arrive)."""

    def __call__(self, unit: Unit, provider: Provider, path: Path, budgets: Budgets,
                 ask: AskSettings, metadata: dict[str, Any]) -> RunOutcome: ...


class AttemptFailedError(AdlError):
    """An attempt that died with its process, node or worker (not with an error of the run's
    own): the unit is run again as a new attempt."""


# Ends that say nothing about the agent (after the provider's own retries): such a run fails its
# unit, is not graded, and runs again on the next `adl eval run`.
NOT_THE_AGENTS_END: dict[str, str] = {"worker_unavailable": "its worker was unavailable",
                                      "provider_error": "its provider failed"}


class GridRun:
    """What every unit of one `run_experiment` call shares: the store, the experiment, the
    grader, the config and the results folder."""

    def __init__(self, config: EvalConfig, results: Path, store: Store, experiment_id: int,
                 grader: HypothesisGrader) -> None:
        self.config, self.results, self.store = config, results, store
        self.experiment_id, self.grader = experiment_id, grader

    def run_unit(self, unit: Unit, agent_run: AgentRun,
                 max_attempts: int = 1) -> Literal["ran", "elsewhere"]:
        """Claim, run, store and grade one unit; "elsewhere": another runner finished it or
        holds it (or took it over meanwhile: this runner's result is dropped). With
        `max_attempts` > 1, an attempt that failed (`AttemptFailedError`), or that ended in a
        way that says nothing about the agent (`NOT_THE_AGENTS_END`: its worker unavailable, its
        provider failed), is released and the unit claimed again as the next attempt; every
        attempt keeps its own transcript. Such a last attempt fails the unit (left unfinished,
        not graded: the next run of the grid runs it again)."""
        config, store = self.config, self.store
        provider = make_provider(unit.provider, options=config.provider_options)
        budgets = Budgets(interactions=unit.budget, llm_calls=config.llm_calls,
                          generated_tokens=config.generated_tokens, wall_time_s=config.wall_time_s)
        # Both agents of a cell share the seed; repeats draw fresh samples.
        ask = config.ask_models.model_copy(update={"seed": config.ask_models.seed + 1000 * unit.repeat})
        metadata = {"organism": unit.organism, "experiment": config.name, "unit": unit.key}
        organism_is_control = get_organism(unit.organism).is_control
        for attempts_left in reversed(range(max_attempts)):
            run = store.start_unit(self.experiment_id, unit.key, organism=unit.organism,
                                   organism_is_control=organism_is_control, agent=unit.agent, budget=unit.budget, repeat=unit.repeat,
                                   provider=provider.name, provider_is_llm=provider.is_llm)
            if run is None:
                return "elsewhere"
            run_id: int = run.id  # type: ignore[assignment]
            try:
                path = self.results / "transcripts" / config.name / f"{unit.file_stem}.attempt{run.attempt}.jsonl"
                store.set_transcript(run_id, path)
                try:
                    outcome = agent_run(unit, provider, path, budgets, ask, metadata)
                except AttemptFailedError as exc:
                    if not attempts_left:
                        raise
                    log.warning("unit %s, attempt %d failed (%s); running it again", unit.key,
                                run.attempt, exc)
                    continue
                if outcome.end_reason in NOT_THE_AGENTS_END:
                    # Not the agent's result: never stored as finished nor graded (an absent
                    # hypothesis would grade 1 and a resume would skip the unit).
                    what = NOT_THE_AGENTS_END[outcome.end_reason]
                    if not attempts_left:
                        tries = f" in {max_attempts} attempts" if max_attempts > 1 else ""
                        raise AttemptFailedError(f"{what}{tries} ({outcome.detail}); left unfinished")
                    log.warning("unit %s, attempt %d: %s (%s); running it again", unit.key,
                                run.attempt, what, outcome.detail)
                    continue
                store.finish_unit(run_id, outcome.model_dump(), None)
                _grade(store, run_id, unit.organism, outcome.hypothesis, self.grader)
            except RunTakenOverError as exc:
                log.warning("unit %s: %s", unit.key, exc)
                return "elsewhere"
            finally:
                store.release(run_id)
            return "ran"
        raise AssertionError("unreachable: the last attempt returns or raises")


def run_experiment(config: EvalConfig, results: Path, store: Store | None = None,
                   show_progress: bool = True) -> ExperimentSummary:
    """Run (or resume) the grid of `config`, in process or on Ray (`config.executor`);
    transcripts under `results/transcripts/`."""
    check_experiment_name(config.name)  # also when the config was built without validation
    store = store or open_store()
    experiment = store.experiment(config.name, config.public_dump())
    if experiment.config and experiment.config != config.public_dump():
        log.warning("experiment %s exists with another config; resuming it with the new grid", config.name)
    grader = make_grader(config.grader, config.grader_repeats)
    units = grid(config)
    finished_runs = store.runs(experiment.id, status="finished")  # type: ignore[arg-type]
    finished = {run.unit_key for run in finished_runs}
    todo = [u for u in units if u.key not in finished]
    failed: list[str] = []
    for run in finished_runs:  # an agent run whose grading failed is graded, not run again
        # A run its live runner is still grading is left to it.
        if not store.grades(run.id) and not store.is_live(run):  # type: ignore[arg-type]
            try:
                _grade(store, run.id, run.organism, run.hypothesis, grader)  # type: ignore[arg-type]
            except AdlError as exc:
                failed.append(redact(f"{run.unit_key}: grading failed: {exc}"))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not show_progress)
    grid_run = GridRun(config, results, store, experiment.id, grader)  # type: ignore[arg-type]
    with progress:
        task = progress.add_task(f"experiment {config.name}", total=len(units), completed=len(units) - len(todo))
        if config.executor == "ray":
            from evals.ray_executor import run_on_ray

            outcome = run_on_ray(grid_run, todo, progress, task)
        else:
            outcome = _run_in_process(grid_run, todo, progress, task)
    failed += outcome.failed
    return ExperimentSummary(experiment=config.name, units=len(units), skipped=len(units) - len(todo),
                             ran=len(todo) - len(outcome.failed) - outcome.elsewhere, failed=failed,
                             elsewhere=outcome.elsewhere, placements=outcome.placements)


class ExecutorOutcome(BaseModel):
    """What an executor reports: failed units (redacted), units left to other runners, and
    where its workers ran."""

    failed: list[str] = Field(default_factory=list)
    elsewhere: int = 0
    placements: list[WorkerPlacement] = Field(default_factory=list)

    def settle(self, unit: Unit, future: concurrent.futures.Future[str]) -> None:
        """Count one finished unit's future: ran, elsewhere or failed (one unit never stops
        the grid)."""
        try:
            if future.result() == "elsewhere":
                self.elsewhere += 1
        except Exception as exc:  # noqa: BLE001 - one unit never stops the grid
            self.failed.append(redact(f"{unit.key}: {type(exc).__name__}: {exc}"))
            log.error("unit %s failed: %s", unit.key, redact(str(exc)))


def _run_in_process(grid_run: GridRun, todo: list[Unit], progress: Progress,
                    task: TaskID) -> ExecutorOutcome:
    """Organism by organism: its worker (by URL or in process), its units `concurrency` at once."""
    from evals.workers import connect

    config = grid_run.config
    result = ExecutorOutcome()
    for organism in config.organisms:
        mine = [u for u in todo if u.organism == organism]
        if not mine:
            continue
        progress.update(task, description=f"{config.name}: loading {organism}")
        url, not_used = _worker_url(config, organism)
        client = connect(organism, url, config.profile, config.organism_size, not_used=not_used,
                         worker_config=config.worker_config(organism),
                         options=config.own_worker_options())
        progress.update(task, description=f"{config.name}: {organism}")

        def agent_run(unit: Unit, provider: Provider, path: Path, budgets: Budgets,
                      ask: AskSettings, metadata: dict[str, Any], client: Any = client) -> RunOutcome:
            return investigate(client, provider, unit.agent, budgets, path, metadata, ask=ask)  # type: ignore[arg-type]

        try:
            with concurrent.futures.ThreadPoolExecutor(config.concurrency) as pool:
                futures = {pool.submit(grid_run.run_unit, unit, agent_run): unit for unit in mine}
                for future in concurrent.futures.as_completed(futures):
                    result.settle(futures[future], future)
                    progress.advance(task)
        finally:
            close = getattr(client, "close", None)
            if callable(close):
                close()
    return result


class RegradeSummary(BaseModel):
    """What `regrade_experiment` did."""
    experiment: str
    grader: str
    graded: int = Field(description="Runs graded now.")
    already: int = Field(description="Runs that already had a grade by this grader (kept).")
    not_graded: int = Field(description="Unfinished runs, and runs of organisms without ground "
                            "truth or missing from the registry.")
    unknown_organisms: list[str] = Field(default_factory=list, description="Organisms the "
                                         "registry lacks (pass their --organisms folder).")
    failed: list[str]
    stopped: bool = Field(False, description="Stopped after MAX_CONSECUTIVE_GRADING_FAILURES "
                          "failures in a row (a dead provider, a bad key): run it again.")


MAX_CONSECUTIVE_GRADING_FAILURES = 3


def regrade_experiment(store: Store, experiment: str, grader: HypothesisGrader,
                       show_progress: bool = False) -> RegradeSummary:
    """Grade an experiment's stored hypotheses again with another grader (a new grader version,
    or an LLM grader after an offline one), without re-running any agent. Grades are added next
    to the old ones, never replace them; `adl eval compare` reads the newest unless told which.
    Each grade is stored as it is made, so an interrupted regrade resumes where it stopped; it
    stops after MAX_CONSECUTIVE_GRADING_FAILURES failures in a row rather than fail every run."""
    found = store.require_experiment(experiment)
    runs = store.runs(found.id)  # type: ignore[arg-type]
    graded = already = not_graded = 0
    unknown: set[str] = set()
    failed: list[str] = []
    in_a_row, stopped = 0, False
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not show_progress)
    with progress:
        task = progress.add_task(f"regrade {experiment} ({grader.name})", total=len(runs))
        for run in runs:
            progress.advance(task)
            if store.current_grade(run.id, grader.name) is not None:  # type: ignore[arg-type]
                already += 1
                continue
            try:
                organism = get_organism(run.organism)
            except UnknownOrganismError:
                unknown.add(run.organism)
                not_graded += 1
                continue
            if run.status != "finished" or not organism.graded:
                not_graded += 1
                continue
            try:
                _grade(store, run.id, run.organism, run.hypothesis, grader)  # type: ignore[arg-type]
            except AdlError as exc:  # a provider error, invalid grader output, ...
                failed.append(redact(f"{run.unit_key}: grading failed: {exc}"))
                in_a_row += 1
                if in_a_row >= MAX_CONSECUTIVE_GRADING_FAILURES:
                    log.error("regrade %s: %d failures in a row, stopped", experiment, in_a_row)
                    stopped = True
                    break
                continue
            in_a_row = 0
            graded += 1
            log.info("regrade %s: run %d graded by %s", experiment, run.id, grader.name)
    return RegradeSummary(experiment=experiment, grader=grader.name, graded=graded,
                          already=already, not_graded=not_graded,
                          unknown_organisms=sorted(unknown), failed=failed, stopped=stopped)


def _grade(store: Store, run_id: int, organism: str, hypothesis: str | None,
           grader: HypothesisGrader) -> None:
    """Grade a finished run; an organism without ground truth is left ungraded (no grade row:
    `adl eval compare` counts it as ungraded)."""
    found = get_organism(organism)
    if not found.graded:
        log.info("%s has no ground truth: run %d is left ungraded.", organism, run_id)
        return
    result = grader.grade(found, hypothesis)
    store.add_grade(run_id, Grade(run_id=run_id, grader=result.grader, score=result.score,
                                  reasoning=result.reasoning, details=result.details))


def _worker_url(config: EvalConfig, organism: str) -> tuple[str | None, list[str]]:
    """The organism's worker: from the config, else $ADL_WORKER_URL when that worker serves
    this organism (the runner image's worker serves one), else None (in-process); and why no
    URL was used (for the error when the in-process worker cannot run)."""
    if organism in config.workers:
        return config.workers[organism], []
    not_used = [f"the config's `workers:` names no worker for {organism}"]
    url = os.environ.get("ADL_WORKER_URL")
    if not url:
        return None, [*not_used, "ADL_WORKER_URL is not set"]
    try:
        served = HttpWorkerClient(url, token=os.environ.get(TOKEN_ENV) or None).info().label
    except WorkerUnavailableError as exc:
        log.warning("%s", redact_url(str(exc)))
        reason = f"ADL_WORKER_URL {redact_url(url)} is unreachable"
    except AdlError as exc:
        reason = f"ADL_WORKER_URL {redact_url(url)} answered with an error ({exc})"
    else:
        if served == organism:
            return url, []
        reason = f"ADL_WORKER_URL {redact_url(url)} serves {served!r}, not {organism!r}"
    log.warning("%s; %s falls back to an in-process worker", reason, organism)
    return None, [*not_used, reason]
