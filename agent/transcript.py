"""Transcripts: one JSON line per event, appended and flushed to disk as it happens, so a
killed run keeps everything up to the kill. Secrets are redacted before anything is written.

Each line is one `TranscriptEvent`: `seq`, `time`, `kind` and the kind's typed `data` (a
discriminated union on `kind`). The loop writes these models; the store, `adl eval show`, the
viewer and the tests read them back through the same models. A line that does not validate
raises `TranscriptFormatError` naming the line and the field."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.context import Compaction
from agent.errors import TranscriptFormatError
from agent.providers.base import ProviderOptions, ToolCall, Usage
from tools.errors import CacheWriteError
from tools.secrets import redact
from tools.toolbox import AgentKind, AskSettings, Hypothesis, ToolSpec
from tools.validation import field_path, validation_problems

MAX_PROBLEMS_SHOWN = 3  # of a line that is not an event
EventKind = Literal["run_started", "message", "llm_call", "tool_call", "notice", "compaction", "run_ended"]
EndReason = Literal["submitted", "final_answer", "no_final_answer", "provider_error",
                    "worker_unavailable", "context_exceeded"]


class Budgets(BaseModel):
    """Limits of one run. `interactions` are model interactions (the paper's i)."""

    interactions: int = Field(5, ge=0)
    llm_calls: int = Field(100, ge=1, description="Agent turns (provider calls); the paper: 100.")
    generated_tokens: int = Field(100_000, ge=1, description="Tokens the agent LLM generates.")
    wall_time_s: float = Field(1800.0, gt=0)


class RunOutcome(BaseModel):
    """How a run ended (the data of `run_ended`)."""

    hypothesis: str | None
    end_reason: EndReason
    detail: str | None = None
    llm_calls: int
    interactions_used: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = Field(description="None when any call's price is unknown.")
    tool_calls: int
    tool_errors: int
    wall_time_s: float
    compactions: int = Field(0, description="Times older tool results were elided to fit the "
                             "context window.")
    board: list[Hypothesis] = Field(default_factory=list, description="The hypothesis board at the end.")


class WorkerFacts(BaseModel):
    """What the worker says about the pair behind a run, for the operator (the agent does not
    see it): the backend, whose tokenizer, and its notes (a zero difference, a fallback, ...)."""

    backend: str | None = None
    tokenizer: str | None = None
    notes: list[str] = Field(default_factory=list)


class RunStartedData(BaseModel):
    """The run's settings. The caller's metadata (organism, experiment, unit, ...) is kept as
    further fields; transcripts older than a field lack it (None)."""

    model_config = ConfigDict(extra="allow")

    agent: AgentKind
    provider: str
    provider_is_llm: bool
    model: str
    provider_options: ProviderOptions | None = None
    context_window: int | None = None
    budgets: Budgets
    ask_models: AskSettings | None = None
    worker: WorkerFacts | None = Field(None, description="None: the worker did not answer (the run "
                                       "then ends at its first message), or an older transcript.")


class MessageData(BaseModel):
    """A message of the conversation: the system prompt, a user turn or an assistant turn."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False


class LlmCallData(BaseModel):
    """One provider call: model, usage, cost, latency and retries."""

    model: str
    provider: str
    usage: Usage
    cost_usd: float | None = None
    latency_s: float
    attempts: int = 1
    stop_reason: str | None = None


class ToolCallData(BaseModel):
    """One tool call and its result (or error)."""

    id: str
    name: str
    arguments: str
    ok: bool
    result: Any = None
    error: str | None = None
    error_fields: list[str] = Field(default_factory=list)
    interactions: int = 0
    latency_s: float = 0.0
    interactions_left: int | None = None


class NoticeData(BaseModel):
    """A note of the loop: the tools and budgets at the start, or why it stopped asking."""

    tools: list[ToolSpec] | None = None
    budgets: Budgets | None = None
    no_tool_calls: int | None = Field(None, description="Turns in a row without a tool call.")
    message: str | None = None


class _Event(BaseModel):
    seq: int
    time: str


class RunStartedEvent(_Event):
    kind: Literal["run_started"] = "run_started"
    data: RunStartedData


class MessageEvent(_Event):
    kind: Literal["message"] = "message"
    data: MessageData


class LlmCallEvent(_Event):
    kind: Literal["llm_call"] = "llm_call"
    data: LlmCallData


class ToolCallEvent(_Event):
    kind: Literal["tool_call"] = "tool_call"
    data: ToolCallData


class NoticeEvent(_Event):
    kind: Literal["notice"] = "notice"
    data: NoticeData


class CompactionEvent(_Event):
    kind: Literal["compaction"] = "compaction"
    data: Compaction


class RunEndedEvent(_Event):
    kind: Literal["run_ended"] = "run_ended"
    data: RunOutcome


TranscriptEvent = Annotated[
    RunStartedEvent | MessageEvent | LlmCallEvent | ToolCallEvent | NoticeEvent | CompactionEvent
    | RunEndedEvent, Field(discriminator="kind")]
EventData = (RunStartedData | MessageData | LlmCallData | ToolCallData | NoticeData | Compaction
             | RunOutcome)
EVENT_ADAPTER: TypeAdapter[TranscriptEvent] = TypeAdapter(TranscriptEvent)
_EVENT_OF: dict[type[BaseModel], type[_Event]] = {
    RunStartedData: RunStartedEvent, MessageData: MessageEvent, LlmCallData: LlmCallEvent,
    ToolCallData: ToolCallEvent, NoticeData: NoticeEvent, Compaction: CompactionEvent,
    RunOutcome: RunEndedEvent,
}


class EventSink:
    """Numbers and timestamps events and hands each, redacted as one JSON line, to `emit`.
    The loop writes to any sink: a `TranscriptWriter` (a file) or an `EventSink` whose lines
    go elsewhere (a Ray task streams them to the driver, which appends them to the file)."""

    def __init__(self, emit: Callable[[str], None], first_seq: int = 0) -> None:
        self._emit = emit
        self._seq = first_seq

    def write(self, data: EventData) -> TranscriptEvent:
        """Emit the event whose data is `data` (its kind follows from the data's type)."""
        event: TranscriptEvent = _EVENT_OF[type(data)](  # type: ignore[assignment]
            seq=self._seq, time=dt.datetime.now(dt.UTC).isoformat(), data=data)
        self._emit(redact(event.model_dump_json()) + "\n")
        self._seq += 1
        return event


class TranscriptWriter(EventSink):
    """Appends events to `path` (JSON lines), flushing and syncing after each; a last line that
    a kill cut off is dropped before the first append."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(self.append_line, len(read_transcript(path)) if path.exists() else 0)
        written = path.read_bytes() if path.exists() else b""
        last = written[written.rfind(b"\n") + 1:]  # a last line without its newline, if any
        if last and not _is_json(last):
            with path.open("r+b") as handle:  # cut off by a kill, it is no event: dropped, so
                handle.truncate(len(written) - len(last))  # only a last line is ever cut off
        self._file = path.open("a", encoding="utf-8")
        if last and _is_json(last):
            self._file.write("\n")

    def append_line(self, line: str) -> None:
        """Append one event line as written by an `EventSink` (redacted, newline-terminated),
        flushed and synced."""
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise CacheWriteError(f"Cannot write the transcript {self.path}: {exc}") from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_transcript(path: Path) -> list[TranscriptEvent]:
    """Every complete event of a transcript. The last line, when a kill cut it off (an object
    that is not complete JSON, no newline after it), is skipped; any other line that is not an
    event raises `TranscriptFormatError` naming the line and the field."""
    events: list[TranscriptEvent] = []
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: JSON keeps U+2028 raw
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and line.lstrip().startswith("{"):
                continue  # the kill hit the last line mid-write
            raise TranscriptFormatError(path, number, "the line",
                                        f"the line: not JSON ({exc.msg})") from exc
        events.append(parse_event(raw, path, number))
    return events


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def parse_event(raw: object, path: Path, line: int) -> TranscriptEvent:
    """One transcript event from its decoded JSON line; `TranscriptFormatError` names the
    fields that do not validate (the first as its `field`)."""
    try:
        return EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        tag = raw.get("kind") if isinstance(raw, dict) else None
        errors = [{**error, "loc": _line_location(error, tag)} for error in exc.errors()]
        shown, _ = validation_problems(errors, whole="the line", limit=MAX_PROBLEMS_SHOWN)
        raise TranscriptFormatError(path, line, field_path(errors[0]["loc"]) or "the line",
                                    shown) from exc


def _line_location(error: Any, tag: object) -> tuple[Any, ...]:
    """Where a validation error is on the line: without the union's tag (not a field of the
    line); `kind` itself when the tag is wrong."""
    if error["type"].startswith("union_tag"):
        return ("kind",)
    location = tuple(error["loc"])
    return location[1:] if location and str(location[0]) == tag else location
