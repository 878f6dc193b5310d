"""The agent loop: a provider, a toolbox and budgets; every event goes to the transcript.

The ADL agent gets the overview first and every tool; the blackbox baseline (as the reference's)
gets the finetuned model's unsteered samples from that overview first, then ask_models and the
hypothesis board only. Both share provider, model, budgets, sampling settings and instructions
apart from the tool guidance. Every tool result shows the budgets that remain. A bad tool call becomes an
error result for the model; a provider failure after retries, or an unreachable worker, ends the
run with its reason recorded. When a budget (agent turns, generated tokens, wall time) runs out the
agent is asked once for its final answer.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.briefing import AdlOverview, Briefing, FinetunedSamples
from agent.context import ContextFullError, ContextKeeper
from agent.errors import ContextLengthError, ProviderError
from agent.providers.base import ChatTurn, Completion, Provider
from agent.transcript import (
    Budgets,
    EndReason,
    EventSink,
    LlmCallData,
    MessageData,
    NoticeData,
    RunOutcome,
    RunStartedData,
    ToolCallData,
    TranscriptWriter,
    WorkerFacts,
)
from prompts import load_text
from tools.errors import AdlError
from tools.toolbox import AgentKind, AskSettings, Toolbox, ToolSpec
from tools.validation import validation_problems
from tools.worker.client import WorkerClient

FINAL_LINE = re.compile(r"^\s*FINAL HYPOTHESIS:\s*(.+)$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
MAX_NUDGES = 2
OVERVIEW_HEADING = "Overview of the activation difference"
SAMPLES_HEADING = "Generations of the finetuned model on several prompts (some may be cut off)"
# Tool errors that mean the worker is gone or going: the run ends instead of wasting turns.
WORKER_GONE = frozenset({"WorkerUnavailableError", "WorkerRequestError:stopping"})


class _Tally:
    def __init__(self) -> None:
        self.llm_calls = self.input_tokens = self.output_tokens = 0
        self.cost: float | None = 0.0
        self.tool_calls = self.tool_errors = 0

    def add(self, completion: Completion) -> None:
        self.llm_calls += 1
        self.input_tokens += completion.usage.input_tokens
        self.output_tokens += completion.usage.output_tokens
        self.cost = None if self.cost is None or completion.cost_usd is None else self.cost + completion.cost_usd


def system_prompt(agent: AgentKind) -> str:
    guidance = load_text("adl_tool_guidance.md" if agent == "adl" else "blackbox_tool_guidance.md")
    return load_text("agent_system.md").format(tool_guidance=guidance.strip(),
                                               final_answer=load_text("final_answer.md").strip())


def run_agent(provider: Provider, toolbox: Toolbox, budgets: Budgets,
              transcript: EventSink) -> RunOutcome:
    """Run one investigation to its end; the transcript receives every event as it happens."""
    started = time.monotonic()
    tally = _Tally()
    agent = toolbox.agent
    system = system_prompt(agent)
    tools = toolbox.specs()
    transcript.write(MessageData(role="system", content=system))
    transcript.write(NoticeData(tools=tools, budgets=budgets))

    keeper = ContextKeeper(provider.context_window, provider.options.max_output_tokens)

    def finish(reason: EndReason, hypothesis: str | None, detail: str | None = None) -> RunOutcome:
        if keeper.compactions:
            plural = "s" if keeper.compactions > 1 else ""
            detail = "; ".join(filter(None, [detail, f"compacted {keeper.compactions} time{plural}"]))
        outcome = RunOutcome(
            hypothesis=hypothesis, end_reason=reason, detail=detail, llm_calls=tally.llm_calls,
            interactions_used=toolbox.interactions_used, input_tokens=tally.input_tokens,
            output_tokens=tally.output_tokens, cost_usd=tally.cost, tool_calls=tally.tool_calls,
            tool_errors=tally.tool_errors, wall_time_s=round(time.monotonic() - started, 3),
            compactions=keeper.compactions,
        )
        transcript.write(outcome)
        return outcome

    kickoff = load_text("agent_task.md").format(interactions=budgets.interactions,
                                                llm_calls=budgets.llm_calls).strip()
    shape = AdlOverview if agent == "adl" else FinetunedSamples
    try:
        first_look = toolbox.overview() if agent == "adl" else toolbox.finetuned_samples()
        look = shape.model_validate(first_look)
    except AdlError as exc:
        return finish("worker_unavailable", None, f"The first message could not be built: {exc}")
    except ValidationError as exc:
        problems, _ = validation_problems(exc, whole="the whole answer", label="field '{}'", limit=5)
        return finish("worker_unavailable", None, "The first message could not be built: the "
                      f"{shape.__name__} of the toolbox is not in the expected shape ({problems}).")
    heading = (OVERVIEW_HEADING if agent == "adl" else SAMPLES_HEADING)
    kickoff += f"\n\n{heading} (JSON):\n" + json.dumps(first_look, ensure_ascii=False)
    messages = [ChatTurn(role="user", content=kickoff,
                         briefing=Briefing(interactions=budgets.interactions, first_look=look))]
    transcript.write(MessageData(role="user", content=kickoff))
    budget = keeper.budget()
    if budget is not None and (first := keeper.estimate(system, messages, tools)) > budget:
        return finish("context_exceeded", None,
                      f"context window {keeper.window:,} exceeded by the overview alone: about "
                      f"{first:,} prompt tokens (system prompt, tools and the first message) plus "
                      f"{keeper.max_output_tokens:,} for the answer; no request was sent (lower "
                      "--max-output-tokens, or use a model with a larger window)")

    def compact(turn_tools: list[ToolSpec], reason: str, force: bool = False) -> bool:
        compaction = keeper.compact(system, messages, turn_tools, reason, force=force)
        if compaction is not None:
            transcript.write(compaction)
        return compaction is not None

    def call(turn_tools: list[ToolSpec]) -> Completion:
        """One provider call; compacts first when the request would not fit, and once more
        (then retries once) when the server refuses the prompt as too long."""
        if not keeper.fits(system, messages, turn_tools):
            compact(turn_tools, "the next request would not fit the context window")
            if not keeper.fits(system, messages, turn_tools):
                raise ContextFullError(
                    f"the conversation no longer fits the context window of {keeper.window:,} "
                    "tokens, even with older tool results elided")
        call_started = time.monotonic()
        characters = keeper.characters(system, messages, turn_tools)
        limit = provider.options.max_output_tokens
        try:
            completion = provider.complete(system, messages, turn_tools, max_output_tokens=limit)
        except ContextLengthError as exc:
            if exc.limit:  # the server's own window beats a configured or unknown one
                keeper.window = min(keeper.window or exc.limit, exc.limit)
                if exc.limit <= keeper.max_output_tokens:
                    raise ContextFullError(
                        f"the output limit of {keeper.max_output_tokens:,} tokens does not fit the "
                        f"context window of {exc.limit:,}: lower --max-output-tokens") from exc
            keeper.learn_overflow(keeper.estimate(system, messages, turn_tools), exc.requested)
            if not compact(turn_tools, f"the server refused the prompt as too long: {exc}", force=True):
                raise
            characters = keeper.characters(system, messages, turn_tools)
            completion = provider.complete(system, messages, turn_tools, max_output_tokens=limit)
        keeper.calibrate(characters, completion.usage.input_tokens)
        tally.add(completion)
        transcript.write(LlmCallData(
            model=completion.model, provider=provider.name, usage=completion.usage,
            cost_usd=completion.cost_usd, latency_s=round(time.monotonic() - call_started, 3),
            attempts=completion.attempts, stop_reason=completion.stop_reason,
        ))
        turn = ChatTurn(role="assistant", content=completion.text, tool_calls=completion.tool_calls)
        messages.append(turn)
        transcript.write(MessageData.model_validate(turn.model_dump()))
        return completion

    def exhausted() -> str | None:
        if tally.llm_calls >= budgets.llm_calls:
            return f"{budgets.llm_calls} agent turns used"
        if tally.output_tokens >= budgets.generated_tokens:
            return f"{budgets.generated_tokens} generated tokens used"
        if time.monotonic() - started >= budgets.wall_time_s:
            return f"wall time of {budgets.wall_time_s:.0f} s reached"
        return None

    def budgets_left() -> dict[str, Any]:
        return {"model_interactions": toolbox.interactions_left,
                "agent_turns": max(0, budgets.llm_calls - tally.llm_calls),
                "generated_tokens": max(0, budgets.generated_tokens - tally.output_tokens),
                "wall_time_s": max(0, round(budgets.wall_time_s - (time.monotonic() - started)))}

    def run_tools(completion: Completion) -> RunOutcome | None:
        for tool_call in completion.tool_calls:
            tool_started = time.monotonic()
            result = toolbox.call(tool_call.name, tool_call.arguments)
            tally.tool_calls += 1
            tally.tool_errors += 0 if result.ok else 1
            transcript.write(ToolCallData(
                id=tool_call.id, name=tool_call.name, arguments=tool_call.arguments,
                ok=result.ok, result=result.content, error=result.error,
                error_fields=result.error_fields, interactions=result.interactions,
                latency_s=round(time.monotonic() - tool_started, 3),
                interactions_left=toolbox.interactions_left,
            ))
            turn = ChatTurn(role="tool", content=result.text(budgets_left()), tool_call_id=tool_call.id,
                            tool_name=tool_call.name, is_error=not result.ok)
            messages.append(turn)
            if result.error_type in WORKER_GONE:
                return finish("worker_unavailable", None, result.error)
            if result.ends_run:
                return finish("submitted", toolbox.submitted)
        return None

    nudges = 0
    context_detail: str | None = None
    try:
        while (reason := exhausted()) is None:
            try:
                completion = call(tools)
            except (ContextLengthError, ContextFullError) as exc:
                reason = "the context window is full"
                context_detail = str(exc)
                break
            if completion.tool_calls:
                nudges = 0
                if (outcome := run_tools(completion)) is not None:
                    return outcome
                continue
            if match := FINAL_LINE.search(completion.text):
                return finish("final_answer", match.group(1).strip())
            nudges += 1
            if nudges > MAX_NUDGES:
                reason = f"the model made no tool call in {nudges} turns"
                transcript.write(NoticeData(no_tool_calls=nudges, message=reason))
                break
            nudge = load_text("continue_nudge.md").strip()
            messages.append(ChatTurn(role="user", content=nudge))
            transcript.write(MessageData(role="user", content=nudge))

        request = load_text("final_answer_request.md").format(reason=reason).strip()
        messages.append(ChatTurn(role="user", content=request))
        transcript.write(MessageData(role="user", content=request))
        submit = [t for t in tools if t.name == "submit_hypothesis"]
        try:
            completion = call(submit)
        except (ContextLengthError, ContextFullError) as exc:
            return finish("context_exceeded", None, f"{context_detail or reason}; the final-answer "
                          f"request did not fit either ({type(exc).__name__})")
        for tool_call in completion.tool_calls:
            if tool_call.name == "submit_hypothesis":
                result = toolbox.call(tool_call.name, tool_call.arguments)
                transcript.write(ToolCallData(id=tool_call.id, name=tool_call.name,
                                              arguments=tool_call.arguments, ok=result.ok,
                                              result=result.content, error=result.error,
                                              interactions=0, latency_s=0.0,
                                              interactions_left=toolbox.interactions_left))
                if result.ok:
                    return finish("final_answer", toolbox.submitted,
                                  f"asked for the final answer: {context_detail or reason}")
        if match := FINAL_LINE.search(completion.text):
            return finish("final_answer", match.group(1).strip(),
                          f"asked for the final answer: {context_detail or reason}")
        return finish("no_final_answer", None,
                      f"asked for the final answer ({context_detail or reason}); none was given")
    except ProviderError as exc:
        return finish("provider_error", None, str(exc))


def _worker_facts(client: WorkerClient) -> WorkerFacts | None:
    """The worker's backend, tokenizer side and notes; None when it does not answer (the loop's
    first message then ends the run as `worker_unavailable`)."""
    try:
        info = client.info()
    except AdlError:
        return None
    return WorkerFacts(backend=info.backend, tokenizer=info.tokenizer, notes=info.notes)


def investigate(
    client: WorkerClient,
    provider: Provider,
    agent: AgentKind,
    budgets: Budgets,
    transcript: Path | EventSink,
    metadata: dict[str, Any] | None = None,
    ask: AskSettings | None = None,
) -> RunOutcome:
    """One run: a fresh toolbox on `client`, the loop, and its transcript: a file at a path, or
    any `EventSink` (a Ray task streams its events to the driver's file). Both agents get the
    same `budgets` and `ask` settings; only the toolset differs."""
    ask = ask or AskSettings()
    toolbox = Toolbox(client, agent, interaction_budget=budgets.interactions, ask=ask)
    with contextlib.ExitStack() as stack:
        sink = (stack.enter_context(TranscriptWriter(transcript)) if isinstance(transcript, Path)
                else transcript)
        sink.write(RunStartedData(
            agent=agent, provider=provider.name, provider_is_llm=provider.is_llm,
            model=provider.model, provider_options=provider.options,
            context_window=provider.context_window, budgets=budgets, ask_models=ask,
            worker=_worker_facts(client), **(metadata or {})))
        outcome = run_agent(provider, toolbox, budgets, sink)
    return outcome.model_copy(update={"board": [h.model_copy(deep=True) for h in toolbox.hypotheses]})
