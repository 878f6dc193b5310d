"""An experiment as Inspect eval logs (`inspect view`, `inspect_ai.log.read_eval_log`,
`inspect_ai.analysis.samples_df`), written with inspect_ai's own API (`write_eval_log`).

The mapping:
- one log per (agent, budget, provider): Inspect's unit of one model on one task;
- one sample per run: its id is the organism, its epoch the repeat (1-based); the messages are
  the run's system and user messages, the assistant turns with their tool calls, and each tool
  result as a tool message: the result's JSON as stored, or its error (which carries Inspect's
  tool-call error); the model saw the same result with the budgets left appended;
- the score (`grade`): the grade, the grader's reasoning as its explanation, the hypothesis as
  its answer; an ungraded run has no score, an unfinished one is exported as far as it got;
- the sample's target: the organism's ground-truth description (empty when it has none);
- metadata: organism, type, budget, repeat, end reason, interactions used, cost and more;
- model usage per model, from the run's provider calls;
- the log's results: the mean grade and the success rate (grade >= 4) over graded runs.

Needs the `inspect` extra (`pip install 'adl-agent[inspect]'`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import inspect_ai
from inspect_ai.log import (
    EvalConfig,
    EvalDataset,
    EvalLog,
    EvalMetric,
    EvalPlan,
    EvalPlanStep,
    EvalResults,
    EvalSample,
    EvalScore,
    EvalSpec,
    EvalStats,
    write_eval_log,
)
from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageTool,
    ChatMessageUser,
    ModelOutput,
    ModelUsage,
)
from inspect_ai.scorer import Score
from inspect_ai.tool import ToolCall, ToolCallError

from agent.providers import parse_provider_spec
from agent.transcript import MessageData, ToolCallData
from evals.compare import SUCCESS_GRADE
from evals.export import file_slug, find_experiment, organism_type, replace_with
from evals.organisms import get_organism
from evals.store import Run, Store, Usage
from tools.errors import AdlError

SCORE_NAME = "grade"
TASK_PREFIX = "adl_agent"


def inspect_model_name(provider: str) -> str:
    """Inspect's `provider/model` name of a provider spec (an openai-compatible URL is left out:
    the public spec is in the sample metadata)."""
    try:
        spec = parse_provider_spec(provider)
    except AdlError:
        return f"adl/{file_slug(provider)}"
    return f"{spec.kind}/{spec.model}"


def _stable_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:22]


def _when(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).isoformat()


def _arguments(text: str) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments as Inspect's dict; arguments that are not a JSON object are kept
    as `raw` with the parse error (the agent may send broken ones)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        return {"raw": text}, f"not JSON: {exc.msg}"
    if not isinstance(value, dict):
        return {"raw": text}, "not a JSON object"
    return value, None


def _messages(items: list[MessageData | ToolCallData], model: str) -> list[ChatMessage]:
    """The transcript's messages and tool results as Inspect chat messages, in order."""
    messages: list[ChatMessage] = []
    for item in items:
        if isinstance(item, ToolCallData):
            body = json.dumps(item.result, ensure_ascii=False) if item.ok else (item.error or "")
            error = None if item.ok else ToolCallError(
                "parsing" if item.error_fields else "unknown", item.error or "the tool call failed")
            messages.append(ChatMessageTool(content=body, tool_call_id=item.id, function=item.name,
                                            error=error))
        elif item.role == "system":
            messages.append(ChatMessageSystem(content=item.content))
        elif item.role == "user":
            messages.append(ChatMessageUser(content=item.content))
        elif item.role == "assistant":
            calls = []
            for call in item.tool_calls:
                arguments, problem = _arguments(call.arguments)
                calls.append(ToolCall(id=call.id, function=call.name, arguments=arguments,
                                      parse_error=problem))
            messages.append(ChatMessageAssistant(content=item.content, tool_calls=calls or None,
                                                 model=model, source="generate"))
        else:  # a tool message of the transcript: its call's result comes as ToolCallData
            messages.append(ChatMessageTool(content=item.content, tool_call_id=item.tool_call_id,
                                            function=item.tool_name))
    return messages


def model_usage(usage: list[Usage], provider: str) -> dict[str, ModelUsage]:
    """Tokens and dollars per model over provider calls (`total_cost` None when any call's
    price is unknown)."""
    kind = inspect_model_name(provider).split("/", 1)[0]
    totals: dict[str, ModelUsage] = {}
    for call in usage:
        name = f"{kind}/{call.model}"
        total = totals.setdefault(name, ModelUsage(total_cost=0.0))
        total.input_tokens += call.input_tokens
        total.output_tokens += call.output_tokens
        total.total_tokens += call.input_tokens + call.output_tokens
        total.total_cost = (None if total.total_cost is None or call.cost_usd is None
                            else total.total_cost + call.cost_usd)
    return totals


def _add_usage(into: dict[str, ModelUsage], usage: dict[str, ModelUsage]) -> None:
    for name, part in usage.items():
        total = into.setdefault(name, ModelUsage(total_cost=0.0))
        total.input_tokens += part.input_tokens
        total.output_tokens += part.output_tokens
        total.total_tokens += part.total_tokens
        total.total_cost = (None if total.total_cost is None or part.total_cost is None
                            else total.total_cost + part.total_cost)


def _target(organism: str) -> str:
    try:
        return get_organism(organism).description or ""
    except AdlError:
        return ""


def run_sample(store: Store, run: Run, grader: str | None = None) -> EvalSample:
    """One run as an Inspect sample (id: the organism; epoch: the repeat, 1-based), scored by
    its current grade (`Store.current_grade`)."""
    run_id: int = run.id  # type: ignore[assignment]
    model = inspect_model_name(run.provider)
    messages = _messages(store.transcript(run_id), model)
    grade = store.current_grade(run_id, grader)
    scores = None
    if grade is not None:
        scores = {SCORE_NAME: Score(value=grade.score, answer=run.hypothesis,
                                    explanation=grade.reasoning,
                                    metadata={"grader": grade.grader, **grade.details})}
    calls = store.tool_calls(run_id)
    inputs = [m for m in messages[:2] if m.role in ("system", "user")]
    return EvalSample(
        id=run.organism, epoch=run.repeat + 1, input=inputs or "", target=_target(run.organism),
        messages=messages,
        output=ModelOutput.from_content(model, run.hypothesis or ""),
        scores=scores,
        metadata={
            "organism": run.organism, "organism_type": organism_type(run.organism),
            "agent": run.agent, "budget": run.budget, "repeat": run.repeat,
            "provider": run.provider, "provider_is_llm": run.provider_is_llm,
            "status": run.status, "attempt": run.attempt, "end_reason": run.end_reason,
            "detail": run.detail, "hypothesis": run.hypothesis,
            "interactions_used": run.interactions_used, "llm_calls": run.llm_calls,
            "tool_calls": len(calls), "tool_errors": sum(not c.ok for c in calls),
            "cost_usd": run.cost_usd, "run_id": run_id, "unit_key": run.unit_key,
        },
        model_usage=model_usage(store.usage(run_id), run.provider),
        started_at=_when(run.started_at), completed_at=_when(run.finished_at),
        total_time=run.wall_time_s, working_time=run.wall_time_s,
        uuid=_stable_id(run.unit_key, run.attempt_id),
    )


def eval_results(samples: list[EvalSample], graders: set[str]) -> EvalResults:
    """The mean grade and the success rate (grade >= SUCCESS_GRADE) over the graded samples."""
    grades = [float(s.scores[SCORE_NAME].value) for s in samples  # type: ignore[arg-type]
              if s.scores and SCORE_NAME in s.scores]
    finished = sum(s.metadata.get("status") == "finished" for s in samples)
    if not grades:
        return EvalResults(total_samples=len(samples), completed_samples=finished, scores=[])
    metrics = {
        "mean": EvalMetric(name="mean", value=sum(grades) / len(grades)),
        "success_rate": EvalMetric(name="success_rate",
                                   value=sum(g >= SUCCESS_GRADE for g in grades) / len(grades),
                                   params={"success_grade": SUCCESS_GRADE}),
    }
    score = EvalScore(name=SCORE_NAME, scorer=", ".join(sorted(graders)) or "grader",
                      scored_samples=len(grades), unscored_samples=len(samples) - len(grades),
                      metrics=metrics)
    return EvalResults(total_samples=len(samples), completed_samples=finished, scores=[score])


def experiment_logs(store: Store, experiment: str,
                    grader: str | None = None) -> dict[tuple[str, int, str], EvalLog]:
    """The experiment's Inspect logs, one per (agent, budget, provider)."""
    found = find_experiment(store, experiment)
    groups: dict[tuple[str, int, str], list[Run]] = defaultdict(list)
    for run in store.runs(found.id):  # type: ignore[arg-type]
        groups[(run.agent, run.budget, run.provider)].append(run)
    created = _when(found.created_at) or dt.datetime.now(dt.UTC).isoformat()
    logs = {}
    for (agent_kind, budget, provider), runs in sorted(groups.items()):
        samples = [run_sample(store, run, grader)
                   for run in sorted(runs, key=lambda r: (r.organism, r.repeat))]
        graders = {str((s.scores[SCORE_NAME].metadata or {}).get("grader")) for s in samples
                   if s.scores and SCORE_NAME in s.scores}
        usage: dict[str, ModelUsage] = {}
        for sample in samples:
            _add_usage(usage, sample.model_usage)
        started = [s.started_at for s in samples if s.started_at]
        completed = [s.completed_at for s in samples if s.completed_at]
        finished = all(run.status == "finished" for run in runs)
        task_args = {"agent": agent_kind, "budget": budget, "provider": provider}
        spec = EvalSpec(
            eval_id=_stable_id(experiment, agent_kind, budget, provider),
            run_id=_stable_id(experiment), created=created,
            task=f"{TASK_PREFIX}/{experiment}", task_id=_stable_id(experiment, "task"),
            task_display_name=f"{experiment}: {agent_kind} agent, i={budget}",
            task_args=task_args, task_args_passed=task_args,
            solver=f"{TASK_PREFIX}/{agent_kind}", solver_args={"interactions": budget},
            dataset=EvalDataset(name=experiment, samples=len(samples),
                                sample_ids=sorted({run.organism for run in runs})),
            model=inspect_model_name(provider), config=EvalConfig(epochs=max(r.repeat for r in runs) + 1),
            packages={"adl-agent": _version(), "inspect_ai": inspect_ai.__version__},
            metadata={"experiment": experiment, "experiment_config": found.config},
        )
        logs[(agent_kind, budget, provider)] = EvalLog(
            status="success" if finished else "started", eval=spec,
            plan=EvalPlan(steps=[EvalPlanStep(solver=f"{TASK_PREFIX}/{agent_kind}",
                                              params={"interactions": budget})]),
            results=eval_results(samples, graders),
            stats=EvalStats(started_at=min(started, default=""), completed_at=max(completed, default=""),
                            model_usage=usage),
            samples=samples,
        )
    return logs


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adl-agent")
    except PackageNotFoundError:
        return "unknown"


def write_inspect_logs(store: Store, experiment: str, out: Path,
                       grader: str | None = None) -> list[Path]:
    """Write the experiment's logs into `out` as `.eval` files (an existing one is replaced
    atomically); the paths written."""
    paths = []
    for (agent_kind, budget, provider), log in experiment_logs(store, experiment, grader).items():
        name = f"{file_slug(experiment)}_{agent_kind}_i{budget}_{file_slug(provider)}.eval"
        paths.append(replace_with(out / name, lambda path, log=log: write_eval_log(log, path, format="eval")))
    return paths
