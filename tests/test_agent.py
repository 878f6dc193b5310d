"""The agent loop with scripted and heuristic providers against the tiny worker."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from agent.errors import ProviderError
from agent.loop import Budgets, investigate, run_agent
from agent.providers import make_provider
from agent.providers.base import ChatTurn, Completion, ToolCall, Usage
from agent.providers.heuristic import HeuristicProvider, content_words
from agent.providers.scripted import ScriptedProvider
from agent.transcript import TranscriptWriter, read_transcript
from tests.worker_fixtures import worker_process
from tools.toolbox import Toolbox, ToolSpec
from tools.worker.client import HttpWorkerClient
from tools.worker.service import AdlService


@pytest.fixture(scope="module")
def agent_home(tiny_home: Path) -> Path:
    return tiny_home


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config


@pytest.fixture(scope="module")
def service(tiny_service: AdlService) -> AdlService:
    return tiny_service


def calls(*tool_calls: tuple[str, str]) -> Completion:
    """A completion with tool calls given as (name, raw JSON arguments)."""
    return Completion(
        tool_calls=[ToolCall(id=f"c{i}_{name}", name=name, arguments=args)
                    for i, (name, args) in enumerate(tool_calls)],
        usage=Usage(input_tokens=100, output_tokens=20), cost_usd=0.001, model="scripted")


def text(content: str) -> Completion:
    return Completion(text=content, usage=Usage(input_tokens=50, output_tokens=10), cost_usd=None,
                      model="scripted")


def test_tool_errors_go_back_to_the_model_and_the_transcript_has_everything(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([
        calls(("get_token_readouts", '{"positions": [9]}'), ("ask_models", '{"prompts": [')),
        calls(("no_such_tool", "{}"), ("ask_models", '{"prompts": ["hello"]}')),
        text("Thinking..."),
        calls(("submit_hypothesis", '{"description": "owls and birds"}')),
    ])
    path = tmp_path / "t.jsonl"
    outcome = investigate(service, provider, "adl", Budgets(interactions=5), path, {"organism": "tiny"})
    assert outcome.end_reason == "submitted" and outcome.hypothesis == "owls and birds"
    assert outcome.tool_errors == 3 and outcome.tool_calls == 5 and outcome.interactions_used == 1
    assert outcome.cost_usd is None  # one call had an unknown price
    tool_turns = [m for m in provider.seen[1] if m.role == "tool"]
    assert [t.is_error for t in tool_turns] == [True, True]
    assert "Unknown position 9" in tool_turns[0].content and "not valid JSON" in tool_turns[1].content
    assert "overview of the activation difference" in provider.seen[0][0].content.lower()
    assert provider.seen[3][-1].role == "user"  # the nudge after a text-only turn
    events = read_transcript(path)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended"
    assert kinds.count("llm_call") == 4 and kinds.count("tool_call") == 5
    first_tool = next(e for e in events if e.kind == "tool_call")
    assert {"arguments", "result", "error", "interactions", "latency_s", "interactions_left"} <= set(first_tool.data)
    assert events[-1].data["hypothesis"] == "owls and birds"


def test_budget_exhaustion_asks_once_for_the_final_answer(service: AdlService, tmp_path: Path) -> None:
    looping = [calls(("list_hypotheses", "{}")) for _ in range(3)]
    provider = ScriptedProvider([*looping, calls(("submit_hypothesis", '{"description": "late answer"}'))])
    outcome = investigate(service, provider, "blackbox", Budgets(interactions=0, llm_calls=3),
                          tmp_path / "a.jsonl")
    assert outcome.end_reason == "final_answer" and outcome.hypothesis == "late answer"
    assert provider.seen_tools[-1] == ["submit_hypothesis"]
    assert "get_token_readouts" not in provider.seen_tools[0]  # the blackbox toolset
    silent = ScriptedProvider([*looping, text("I am not sure.")])
    outcome = investigate(service, silent, "blackbox", Budgets(interactions=0, llm_calls=3), tmp_path / "b.jsonl")
    assert outcome.end_reason == "no_final_answer" and outcome.hypothesis is None
    assert "3 agent turns used" in (outcome.detail or "")
    wordy = ScriptedProvider([calls(("list_hypotheses", "{}")), calls(("list_hypotheses", "{}")),
                              calls(("submit_hypothesis", '{"description": "short"}'))])
    outcome = investigate(service, wordy, "blackbox", Budgets(generated_tokens=30), tmp_path / "d.jsonl")
    assert outcome.end_reason == "final_answer" and "30 generated tokens used" in (outcome.detail or "")
    assert outcome.llm_calls == 3  # 20 + 20 tokens passed the budget after the second turn
    final_line = ScriptedProvider([text("Done.\nFINAL HYPOTHESIS: cakes")])
    outcome = investigate(service, final_line, "blackbox", Budgets(), tmp_path / "c.jsonl")
    assert outcome.end_reason == "final_answer" and outcome.hypothesis == "cakes"


def test_interaction_budget_is_enforced(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([
        calls(("ask_models", '{"prompts": ["a", "b", "c"]}')),
        calls(("ask_models", '{"prompts": ["hello"]}')),
        calls(("submit_hypothesis", '{"description": "x"}')),
    ])
    outcome = investigate(service, provider, "blackbox", Budgets(interactions=2), tmp_path / "t.jsonl")
    assert outcome.interactions_used == 1 and outcome.tool_errors == 1
    assert "only 2 are left" in provider.seen[1][-1].content


def test_provider_failure_ends_the_run_with_its_reason(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([calls(("list_hypotheses", "{}")),
                                 ProviderError("HTTP 500 (gave up after 6 attempts)")])
    path = tmp_path / "t.jsonl"
    outcome = investigate(service, provider, "adl", Budgets(), path)
    assert outcome.end_reason == "provider_error" and "gave up after 6 attempts" in (outcome.detail or "")
    assert read_transcript(path)[-1].kind == "run_ended"


@pytest.mark.parametrize("agent", ["adl", "blackbox"])
@pytest.mark.parametrize("budget", [0, 5])
def test_heuristic_policy_investigates_and_submits(service: AdlService, tmp_path: Path, agent: str, budget: int) -> None:
    provider = make_provider("heuristic")
    assert not provider.is_llm and provider.name.startswith("heuristic:")
    outcome = investigate(service, provider, agent, Budgets(interactions=budget), tmp_path / "t.jsonl")  # type: ignore[arg-type]
    assert outcome.end_reason == "submitted" and outcome.hypothesis
    assert outcome.interactions_used <= budget
    names = [e.data["name"] for e in read_transcript(tmp_path / "t.jsonl") if e.kind == "tool_call"]
    if agent == "adl":
        assert names[0] == "get_token_readouts"
    if budget:
        assert "ask_models" in names
    assert names[-1] == "submit_hypothesis"


def test_heuristic_hypothesis_uses_answer_differences() -> None:
    overview = {"datasets": [{"logit_lens_suppressed": {"0": ["the"], "1": [" cake", " oven", " baking"]},
                              "steering": [{"samples": [{"steered": "Bake a cake in the oven",
                                                         "unsteered": "I like walks"}]}]}]}
    kickoff = ChatTurn(role="user", content="Budget: 4 model interactions, 30 of your turns.\n\n"
                       "Overview of the activation difference (JSON):\n" + json.dumps(overview))
    policy = HeuristicProvider()
    tools = [ToolSpec(name=n, description="", parameters={}) for n in ("ask_models", "add_hypothesis", "submit_hypothesis")]
    first = policy.complete("", [kickoff], tools).tool_calls[0]
    assert first.name == "ask_models"
    prompts = json.loads(first.arguments)["prompts"]
    assert len(prompts) == 4 and "cake" in prompts[0]
    answers = {"answers": [{"prompt": p, "base": "Sure, here is a story.",
                            "finetuned": "Frosting and frosting recipes with frosting layers"} for p in prompts]}
    history = [kickoff, ChatTurn(role="assistant", tool_calls=[first]),
               ChatTurn(role="tool", tool_call_id=first.id, content=json.dumps(answers))]
    step = policy.complete("", history, tools).tool_calls[0]
    assert step.name == "add_hypothesis"
    hypothesis = json.loads(step.arguments)["description"]
    assert "frosting" in hypothesis and "cake" in hypothesis
    assert content_words("The Oven's heat") == ["oven's", "heat"]


def test_killing_the_worker_ends_the_run_and_keeps_the_transcript(config, agent_home: Path, service: AdlService, tmp_path: Path) -> None:
    with worker_process(config, agent_home, agent_home / "cache") as (url, process):
        def kill_then_ask(messages: list[ChatTurn], tools: list[ToolSpec]) -> Completion:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return calls(("ask_models", '{"prompts": ["hello"]}'))

        provider = ScriptedProvider([calls(("get_token_readouts", '{"k": 3}')), kill_then_ask])
        path = tmp_path / "killed.jsonl"
        outcome = investigate(HttpWorkerClient(url), provider, "adl", Budgets(), path)
    assert outcome.end_reason == "worker_unavailable"
    assert "cannot be reached" in (outcome.detail or "")
    events = read_transcript(path)
    tool_events = [e for e in events if e.kind == "tool_call"]
    assert tool_events[0].data["ok"] and not tool_events[1].data["ok"]
    assert events[-1].kind == "run_ended" and events[-1].data["end_reason"] == "worker_unavailable"


def test_a_transcript_cut_by_a_kill_is_still_readable(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path) as writer:
        writer.write("message", role="user", content="one")
        writer.write("message", role="user", content="two")
    with path.open("a") as handle:
        handle.write('{"seq": 2, "time": "x", "kind": "mess')  # the kill hit mid-line
    assert [e.data["content"] for e in read_transcript(path)] == ["one", "two"]
    with TranscriptWriter(path) as writer:  # resuming appends after the complete events
        assert writer.write("notice", note="resumed").seq == 2


def test_run_agent_records_system_prompt_and_tools(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([calls(("submit_hypothesis", '{"description": "x"}'))])
    with TranscriptWriter(tmp_path / "t.jsonl") as writer:
        run_agent(provider, Toolbox(service, "adl"), Budgets(), writer)
    events = read_transcript(tmp_path / "t.jsonl")
    assert events[0].data["role"] == "system" and "Activation Difference Lens" in events[0].data["content"]
    assert {t["name"] for t in events[1].data["tools"]} == set(Toolbox.ADL_TOOLS)
