"""Model and provider text is printed literally by the CLI: Rich markup in a hypothesis, a
transcript or a provider error neither crashes a view (MarkupError) nor styles or links."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from agent.loop import RunOutcome
from agent.transcript import (
    Budgets,
    MessageData,
    RunStartedData,
    ToolCallData,
    TranscriptWriter,
    WorkerFacts,
)
from evals.store import Grade, open_store

MARKUP = ("[/]", "[bold]x[/bold]", "[link=https://evil.example]y[/link]")
TEXT = "look: " + " ".join(MARKUP) + " :red_circle:"
PROVIDER = "openai-compatible:http://h/[b]v1[/b]:m[/]"


def _printed_literally(output: str) -> None:
    flat = " ".join(output.split())  # soft wraps aside
    for markup in (*MARKUP, ":red_circle:"):
        assert markup in flat, (markup, output)
    assert "\x1b]8;" not in output  # no terminal hyperlink


@pytest.fixture()
def database(tmp_path: Path) -> str:
    """A store with one finished, graded run whose every model-written text carries markup."""
    url = f"sqlite:///{tmp_path / 'adl.db'}"
    store = open_store(url)
    experiment = store.experiment("markup", {})
    run = store.start_unit(experiment.id, f"cake_bake|adl|2|0|{PROVIDER}", organism="cake_bake",  # type: ignore[arg-type]
                           agent="adl", budget=2, repeat=0, provider=PROVIDER, provider_is_llm=True)
    assert run is not None
    transcript = tmp_path / "run.jsonl"
    with TranscriptWriter(transcript) as writer:
        writer.write(RunStartedData(agent="adl", provider=PROVIDER, provider_is_llm=True, model="m",
                                    budgets=Budgets(interactions=2),
                                    worker=WorkerFacts(backend="bridge", tokenizer="base", notes=[TEXT])))
        writer.write(MessageData(role="user", content=TEXT))
        writer.write(MessageData(role="assistant", content=TEXT, tool_calls=[]))
        writer.write(ToolCallData(id="t1", name="ask_models[/]", arguments=TEXT, ok=False, error=TEXT,
                                  interactions=0, latency_s=0.1, interactions_left=2))
        writer.write(ToolCallData(id="t2", name="ask_models", arguments="{}", ok=True,
                                  result={"answers": [TEXT]}, interactions=1, latency_s=0.1,
                                  interactions_left=1))
    store.set_transcript(run.id, transcript)  # type: ignore[arg-type]
    store.finish_unit(run.id, {"hypothesis": TEXT, "end_reason": "submitted", "detail": TEXT,  # type: ignore[arg-type]
                               "llm_calls": 1}, None)
    release = getattr(store, "release", None)  # a store that holds claims lets this one go
    if callable(release):
        release(run.id)
    store.add_grade(run.id, Grade(run_id=run.id, grader=f"llm:{PROVIDER}", score=3.0,  # type: ignore[arg-type]
                                  reasoning=TEXT, details={}))
    return url


def _adl(*args: str) -> str:
    from evals.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_show_prints_model_text_literally(database: str) -> None:
    output = _adl("eval", "show", "1", "--database", database)
    _printed_literally(output)
    assert "ask_models[/]" in output and PROVIDER in output and f"llm:{PROVIDER}" in output
    assert "worker: backend bridge, tokenizer base" in output and "worker note: look:" in output
    assert output.count("[link=https://evil.example]y[/link]") >= 6  # messages, tool, detail, hypothesis, grade


def test_eval_compare_prints_provider_and_grader_names_literally(database: str, tmp_path: Path) -> None:
    output = _adl("eval", "compare", "markup", "--database", database, "--out", str(tmp_path / "compare"))
    assert f"(grader: llm:{PROVIDER})" in output and f"providers: {PROVIDER};" in output


def test_agent_run_prints_model_text_literally(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from evals.cli import agent

    outcome = RunOutcome(hypothesis=TEXT, end_reason="provider_error", detail=TEXT, llm_calls=1,
                         interactions_used=0, input_tokens=1, output_tokens=1, cost_usd=None,
                         tool_calls=0, tool_errors=0, wall_time_s=0.1)
    monkeypatch.setenv("ADL_RESULTS", str(tmp_path))
    monkeypatch.setattr(agent, "make_provider", lambda spec, **kw: SimpleNamespace(name=PROVIDER, is_llm=True))
    monkeypatch.setattr(agent, "connect", lambda *args: object())
    monkeypatch.setattr(agent, "investigate", lambda *args, **kwargs: outcome)
    from evals.cli import app

    result = CliRunner().invoke(app, ["agent", "run", "cake_bake", "--provider", "x"], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # a provider error ends the command with 3
    _printed_literally(result.output)
    assert PROVIDER in result.output


def test_investigate_prints_model_text_literally(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from evals import investigation  # imported by the command when it runs (the worker extra)

    report = SimpleNamespace(notes=[TEXT], agents=[SimpleNamespace(agent="adl", provider=PROVIDER, hypothesis=TEXT)])
    monkeypatch.setattr(investigation, "run_investigation", lambda *args, **kwargs: report)
    output = _adl("investigate", "--base", "b", "--finetune", "f", "--out", str(tmp_path))
    _printed_literally(output)
    assert output.count("[link=https://evil.example]y[/link]") == 2


def test_an_error_quoting_markup_is_printed_literally(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from evals.cli import main

    monkeypatch.setattr(sys, "argv", ["adl", "agent", "run", "cake_bake", "--provider", f"bogus:{TEXT}"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    _printed_literally(capsys.readouterr().err)


def test_eval_regrade_adds_the_offline_grade_and_compare_can_pick_either(database: str,
                                                                          tmp_path: Path) -> None:
    from evals.grading import OfflineGrader

    output = _adl("eval", "regrade", "markup", "--database", database)
    assert f"by {OfflineGrader.name}: 1 graded now" in " ".join(output.split())
    assert "1 already graded" in " ".join(_adl("eval", "regrade", "markup", "--database", database).split())
    grades = open_store(database).grades(1)
    assert [g.grader for g in grades] == [f"llm:{PROVIDER}", OfflineGrader.name]
    newest = _adl("eval", "compare", "markup", "--database", database, "--out", str(tmp_path / "a"))
    assert f"(grader: {OfflineGrader.name})" in newest  # the newest grade
    old = _adl("eval", "compare", "markup", "--database", database, "--out", str(tmp_path / "b"),
               "--grader", f"llm:{PROVIDER}")
    assert f"(grader: llm:{PROVIDER})" in " ".join(old.split()) and "3.00" in old
