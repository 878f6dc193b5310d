"""Complete typed transcript events for tests that write transcripts by hand."""

from __future__ import annotations

from typing import Any

from agent.transcript import Budgets, EndReason, RunOutcome, RunStartedData


def run_started(agent: str = "adl", provider: str = "fake:fake-model", provider_is_llm: bool = True,
                **metadata: Any) -> RunStartedData:
    """A `run_started` event's data; `metadata` (organism, ...) rides along as extra fields."""
    return RunStartedData(agent=agent, provider=provider, provider_is_llm=provider_is_llm,  # type: ignore[arg-type]
                          model=provider.split(":")[-1], budgets=Budgets(), **metadata)


def run_ended(end_reason: EndReason = "submitted", hypothesis: str | None = None,
              **counts: Any) -> RunOutcome:
    """A `run_ended` event's data; every count is 0 unless given."""
    fields: dict[str, Any] = {"llm_calls": 0, "interactions_used": 0, "input_tokens": 0,
                              "output_tokens": 0, "cost_usd": None, "tool_calls": 0,
                              "tool_errors": 0, "wall_time_s": 0.0}
    return RunOutcome(hypothesis=hypothesis, end_reason=end_reason, **{**fields, **counts})
