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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.loop import Budgets, investigate
from agent.providers import ProviderOptions, make_provider, parse_provider_spec, public_spec
from evals.grading import HypothesisGrader, make_grader
from evals.organisms import get_organism
from evals.organisms.schema import OrganismSize
from evals.store import Grade, RunTakenOverError, Store, open_store
from evals.workers import AnalysisProfile
from tools.config import load_yaml_model
from tools.errors import AdlError, AdlInputError, WorkerUnavailableError
from tools.secrets import redact
from tools.toolbox import AGENT_KINDS, AskSettings
from tools.url import redact_url
from tools.worker.client import TOKEN_ENV, HttpWorkerClient

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
    concurrency: int = Field(4, ge=1, description="Units (API calls) running at the same time.")
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
        return data

    def validate_organisms(self) -> None:
        for name in self.organisms:
            get_organism(name)


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


def run_experiment(config: EvalConfig, results: Path, store: Store | None = None,
                   show_progress: bool = True) -> ExperimentSummary:
    """Run (or resume) the grid of `config`; transcripts under `results/transcripts/`."""
    from evals.workers import connect

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
    elsewhere = 0
    for run in finished_runs:  # an agent run whose grading failed is graded, not run again
        # A run its live runner is still grading is left to it.
        if not store.grades(run.id) and not store.is_live(run):  # type: ignore[arg-type]
            try:
                _grade(store, run.id, run.organism, run.hypothesis, grader)  # type: ignore[arg-type]
            except AdlError as exc:
                failed.append(redact(f"{run.unit_key}: grading failed: {exc}"))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not show_progress)
    with progress:
        task = progress.add_task(f"experiment {config.name}", total=len(units), completed=len(units) - len(todo))
        for organism in config.organisms:
            mine = [u for u in todo if u.organism == organism]
            if not mine:
                continue
            progress.update(task, description=f"{config.name}: loading {organism}")
            url, not_used = _worker_url(config, organism)
            client = connect(organism, url, config.profile, config.organism_size,
                             not_used=not_used)
            progress.update(task, description=f"{config.name}: {organism}")
            try:
                with concurrent.futures.ThreadPoolExecutor(config.concurrency) as pool:
                    futures = {pool.submit(_run_unit, store, experiment.id, unit, client, grader,  # type: ignore[arg-type]
                                           config, results): unit for unit in mine}
                    for future in concurrent.futures.as_completed(futures):
                        unit = futures[future]
                        try:
                            if future.result() == "elsewhere":
                                elsewhere += 1
                        except Exception as exc:  # noqa: BLE001 - one unit never stops the grid
                            failed.append(redact(f"{unit.key}: {type(exc).__name__}: {exc}"))
                            log.error("unit %s failed: %s", unit.key, exc)
                        progress.advance(task)
            finally:
                close = getattr(client, "close", None)
                if callable(close):
                    close()
    return ExperimentSummary(experiment=config.name, units=len(units), skipped=len(units) - len(todo),
                             ran=len(todo) - len(failed) - elsewhere, failed=failed,
                             elsewhere=elsewhere)


def _run_unit(store: Store, experiment_id: int, unit: Unit, client: Any, grader: HypothesisGrader,
              config: EvalConfig, results: Path) -> Literal["ran", "elsewhere"]:
    """Claim, run, store and grade one unit; "elsewhere": another runner finished it or holds
    it (or took it over meanwhile: this runner's result is dropped)."""
    provider = make_provider(unit.provider, options=config.provider_options)
    run = store.start_unit(experiment_id, unit.key, organism=unit.organism, agent=unit.agent,
                           budget=unit.budget, repeat=unit.repeat, provider=provider.name,
                           provider_is_llm=provider.is_llm)
    if run is None:
        return "elsewhere"
    try:
        _run_claimed(store, run.id, run.attempt, unit, provider, client, grader, config, results)  # type: ignore[arg-type]
    except RunTakenOverError as exc:
        log.warning("unit %s: %s", unit.key, exc)
        return "elsewhere"
    finally:
        store.release(run.id)  # type: ignore[arg-type]
    return "ran"


def _run_claimed(store: Store, run_id: int, attempt: int, unit: Unit, provider: Any, client: Any,
                 grader: HypothesisGrader, config: EvalConfig, results: Path) -> None:
    path = results / "transcripts" / config.name / f"{unit.file_stem}.attempt{attempt}.jsonl"
    store.set_transcript(run_id, path)
    budgets = Budgets(interactions=unit.budget, llm_calls=config.llm_calls,
                      generated_tokens=config.generated_tokens, wall_time_s=config.wall_time_s)
    # Both agents of a cell share the seed; repeats draw fresh samples.
    ask = config.ask_models.model_copy(update={"seed": config.ask_models.seed + 1000 * unit.repeat})
    outcome = investigate(client, provider, unit.agent, budgets, path,  # type: ignore[arg-type]
                          {"organism": unit.organism, "experiment": config.name, "unit": unit.key},
                          ask=ask)
    store.finish_unit(run_id, outcome.model_dump(), None)
    _grade(store, run_id, unit.organism, outcome.hypothesis, grader)


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
