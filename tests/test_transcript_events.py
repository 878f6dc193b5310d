"""Typed transcript events: every kind round-trips through the one discriminated union, older
lines still read, and a line that is not an event gives an error naming the line and the field
(in the store, in `adl eval show` and in the viewer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.context import Compaction
from agent.errors import TranscriptFormatError
from agent.providers.base import ProviderOptions, ToolCall, Usage
from agent.transcript import (
    EVENT_ADAPTER,
    Budgets,
    EventData,
    LlmCallData,
    MessageData,
    NoticeData,
    RunStartedData,
    ToolCallData,
    TranscriptWriter,
    read_transcript,
)
from evals.store import Store, open_store
from evals.viewer import create_viewer_app
from tests.transcript_fixtures import run_ended
from tools.toolbox import AskSettings, Hypothesis, ToolSpec

EVENTS: list[EventData] = [
    RunStartedData(agent="adl", provider="openai:gpt-x", provider_is_llm=True, model="gpt-x",
                   provider_options=ProviderOptions(context_window=8192), context_window=8192,
                   budgets=Budgets(interactions=3), ask_models=AskSettings(seed=7),
                   organism="cake_bake", unit="cake_bake|adl|3|0"),
    MessageData(role="system", content="You investigate."),
    NoticeData(tools=[ToolSpec(name="ask_models", description="Ask.", parameters={"type": "object"})],
               budgets=Budgets()),
    MessageData(role="user", content="Budget: 3 model interactions."),
    LlmCallData(model="gpt-x", provider="openai:gpt-x", usage=Usage(input_tokens=9, output_tokens=2),
                cost_usd=0.01, latency_s=0.5, attempts=2, stop_reason="tool_calls"),
    MessageData(role="assistant", tool_calls=[ToolCall(id="c1", name="ask_models", arguments="{}")]),
    ToolCallData(id="c1", name="ask_models", arguments="{}", ok=False, error="prompts: required",
                 error_fields=["prompts"], interactions=0, latency_s=0.1, interactions_left=3),
    ToolCallData(id="c2", name="ask_models", arguments='{"prompts": ["hi"]}', ok=True,
                 result={"answers": [{"prompt": "hi", "base": "a", "finetuned": "b"}]},
                 interactions=1, latency_s=0.2, interactions_left=2),
    Compaction(elided=2, tokens_before=900, tokens_after=400, window=1024, reason="full"),
    NoticeData(no_tool_calls=3, message="the model made no tool call in 3 turns"),
    run_ended("final_answer", "Cakes.", detail="asked for the final answer", llm_calls=2,
              compactions=1, board=[Hypothesis(id=1, description="cakes", notes=["oven"])]),
]
KINDS = ["run_started", "message", "notice", "message", "llm_call", "message", "tool_call",
         "tool_call", "compaction", "notice", "run_ended"]
# Lines as the loop wrote them before the events were typed (and before later fields existed).
OLD_LINES = [
    {"kind": "run_started", "data": {"agent": "blackbox", "provider": "heuristic:offline-baseline-v3",
                                     "provider_is_llm": False, "model": "offline-baseline-v3",
                                     "budgets": {"interactions": 5, "llm_calls": 100,
                                                 "generated_tokens": 100000, "wall_time_s": 1800.0},
                                     "organism": "cake_bake"}},
    {"kind": "message", "data": {"role": "user", "content": "What changed?"}},
    {"kind": "tool_call", "data": {"id": "c1", "name": "submit_hypothesis", "arguments": "{}",
                                   "ok": True, "result": "ok", "error": None, "interactions": 0,
                                   "latency_s": 0.0, "interactions_left": 5}},
    {"kind": "run_ended", "data": {"hypothesis": "x", "end_reason": "submitted", "detail": None,
                                   "llm_calls": 1, "interactions_used": 0, "input_tokens": 0,
                                   "output_tokens": 0, "cost_usd": 0.0, "tool_calls": 1,
                                   "tool_errors": 0, "wall_time_s": 0.1}},
]
MALFORMED = {"seq": 2, "time": "t", "kind": "tool_call",
             "data": {"id": "c9", "name": "ask_models", "arguments": "{}", "ok": "perhaps"}}


def _write(path: Path, events: list[EventData]) -> None:
    with TranscriptWriter(path) as writer:
        for data in events:
            writer.write(data)


def test_every_event_kind_round_trips_through_the_union(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    _write(path, EVENTS)
    events = read_transcript(path)
    assert [e.kind for e in events] == KINDS and [e.seq for e in events] == list(range(len(EVENTS)))
    assert [e.data for e in events] == EVENTS
    assert events[0].data.model_extra == {"organism": "cake_bake", "unit": "cake_bake|adl|3|0"}
    for line, event in zip(path.read_text().splitlines(), events, strict=True):
        assert EVENT_ADAPTER.validate_json(line) == event
        assert json.loads(EVENT_ADAPTER.dump_json(event)) == json.loads(line)  # the wire shape
        assert set(json.loads(line)) == {"seq", "time", "kind", "data"}


def test_transcripts_written_before_typed_events_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps({"seq": i, "time": "2026-01-01T00:00:00+00:00", **line}) + "\n"
                            for i, line in enumerate(OLD_LINES)))
    started, message, call, ended = read_transcript(path)
    assert started.data.ask_models is None and started.data.provider_options is None  # type: ignore[union-attr]
    assert message.data == MessageData(role="user", content="What changed?")
    assert call.data.error_fields == []  # type: ignore[union-attr]
    assert ended.data.compactions == 0 and ended.data.board == []  # type: ignore[union-attr]


@pytest.mark.parametrize(("line", "field"), [
    (MALFORMED, "data.ok"),
    ({"seq": 0, "time": "t", "kind": "thought", "data": {}}, "kind"),
    ({"seq": 0, "time": "t", "data": {}}, "kind"),
    ({"seq": 0, "time": "t", "kind": "message", "data": {"content": "no role"}}, "data.role"),
    ({"time": "t", "kind": "notice", "data": {}}, "seq"),
    ([1, 2], "the line"),
])
def test_a_line_that_is_not_an_event_names_the_line_and_the_field(tmp_path: Path, line: object,
                                                                   field: str) -> None:
    path = tmp_path / "t.jsonl"
    _write(path, EVENTS[:2])
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    with pytest.raises(TranscriptFormatError) as raised:
        read_transcript(path)
    assert raised.value.line == 3 and raised.value.field == field
    assert f"{path}, line 3: " in str(raised.value) and field in str(raised.value)


def test_foreign_text_is_an_error_but_a_last_line_cut_by_a_kill_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    _write(path, EVENTS[:2])
    with path.open("a") as handle:
        handle.write("not a transcript\n")
    with pytest.raises(TranscriptFormatError, match="line 3: .*not JSON"):
        read_transcript(path)
    _write(path.with_name("cut.jsonl"), EVENTS[:2])
    cut = path.with_name("cut.jsonl")
    with cut.open("a") as handle:
        handle.write('{"seq": 2, "time": "x", "kind": "mess')  # the kill hit the last line
    assert [e.data for e in read_transcript(cut)] == EVENTS[:2]


def test_a_broken_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    """Only the last line can be cut off by a kill: a broken object before it is corruption."""
    path = tmp_path / "t.jsonl"
    _write(path, EVENTS[:2])
    with path.open("a") as handle:
        handle.write('{"seq": 2, "time": "x", "kind": "mess\n')
        handle.write(json.dumps({"seq": 3, "time": "x", **OLD_LINES[1]}) + "\n")
    with pytest.raises(TranscriptFormatError, match="line 3: .*not JSON") as raised:
        read_transcript(path)
    assert raised.value.line == 3


def test_resuming_drops_the_line_a_kill_cut_off(tmp_path: Path) -> None:
    """A writer opened on a transcript whose last line a kill cut off drops that line, so the
    events it appends leave the file readable."""
    path = tmp_path / "t.jsonl"
    _write(path, EVENTS[:2])
    with path.open("a") as handle:
        handle.write('{"seq": 2, "time": "x", "kind": "mess')
    with TranscriptWriter(path) as writer:
        assert writer.write(EVENTS[2]).seq == 2
    assert [e.data for e in read_transcript(path)] == EVENTS[:3]
    assert '"mess\n' not in path.read_text()


def _store_with_run(tmp_path: Path, transcript: Path) -> tuple[Store, int, str]:
    url = f"sqlite:///{tmp_path / 'adl.db'}"
    store = open_store(url)
    experiment = store.experiment("typed", {})
    run = store.start_unit(experiment.id, "u1", organism="cake_bake", agent="adl", budget=3,  # type: ignore[arg-type]
                           repeat=0, provider="openai:gpt-x", provider_is_llm=True)
    assert run is not None and run.id is not None
    store.set_transcript(run.id, transcript)
    return store, run.id, url


def _malformed_transcript(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    _write(path, EVENTS[:2])
    with path.open("a") as handle:
        handle.write(json.dumps(MALFORMED) + "\n")
    return path


def test_the_store_refuses_a_malformed_transcript_and_stores_nothing(tmp_path: Path) -> None:
    store, run_id, _ = _store_with_run(tmp_path, _malformed_transcript(tmp_path))
    with pytest.raises(TranscriptFormatError, match=r"bad\.jsonl, line 3: .*data\.ok"):
        store.finish_unit(run_id, {"end_reason": "submitted", "hypothesis": "x"}, None)
    run = store.run(run_id)
    assert run is not None and run.status == "running" and run.hypothesis is None
    assert store.messages(run_id) == [] and store.tool_calls(run_id) == []


def test_eval_show_of_a_malformed_transcript_names_the_line_and_the_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from evals.cli import main

    _, run_id, url = _store_with_run(tmp_path, _malformed_transcript(tmp_path))
    monkeypatch.setattr(sys, "argv", ["adl", "eval", "show", str(run_id), "--database", url])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "bad.jsonl, line 3: not a transcript event of this version: data.ok:" in error


def test_the_viewer_shows_the_run_and_why_its_transcript_cannot_be_read(tmp_path: Path) -> None:
    store, run_id, _ = _store_with_run(tmp_path, _malformed_transcript(tmp_path))
    client = TestClient(create_viewer_app(store, allowed_hosts=["testserver"]))
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and 'id="transcript-error"' in page.text
    assert "bad.jsonl, line 3: not a transcript event of this version: data.ok" in page.text
    assert str(tmp_path) not in page.text  # the file's name, not where it lies on the runner


def test_the_store_reads_a_run_from_its_file_or_its_rows_alike(tmp_path: Path) -> None:
    path = tmp_path / "good.jsonl"
    _write(path, EVENTS)
    store, run_id, _ = _store_with_run(tmp_path, path)
    from_file = store.transcript(run_id)  # still running: the events so far
    assert [type(item) for item in from_file] == [MessageData, MessageData, MessageData,
                                                  ToolCallData, ToolCallData]
    store.finish_unit(run_id, {"end_reason": "final_answer", "hypothesis": "Cakes."}, None)
    path.unlink()  # the rows stored at the finish are the copy that stays
    assert _shown(store.transcript(run_id)) == _shown(from_file)


def _shown(items: list[MessageData | ToolCallData]) -> list[dict[str, object]]:
    """What a transcript view shows of each item (the rows have no column for error_fields)."""
    return [item.model_dump(exclude={"error_fields"}) for item in items]


def test_a_stored_row_that_is_not_an_event_names_the_run_and_the_field(tmp_path: Path) -> None:
    """The rows a finished run keeps are read back as events too: a row that does not validate
    raises TranscriptFormatError naming the run, the row and the field (the viewer shows it)."""
    from sqlmodel import select

    from evals.store import Message

    path = tmp_path / "good.jsonl"
    _write(path, EVENTS)
    store, run_id, _ = _store_with_run(tmp_path, path)
    store.finish_unit(run_id, {"end_reason": "final_answer", "hypothesis": "Cakes."}, None)
    path.unlink()
    with store.session() as session:
        row = session.exec(select(Message).where(Message.run_id == run_id, Message.role == "user")).one()
        seq, row.role = row.seq, "robot"
        session.add(row)
        session.commit()
    with pytest.raises(TranscriptFormatError) as raised:
        store.transcript(run_id)
    assert raised.value.field == "role" and raised.value.path is None
    assert str(raised.value).startswith(f"run {run_id}, stored message {seq}: not a transcript "
                                        "event of this version: role:")
    client = TestClient(create_viewer_app(store, allowed_hosts=["testserver"]))
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and 'id="transcript-error"' in page.text
    assert f"run {run_id}, stored message {seq}" in page.text
