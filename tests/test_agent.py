"""The agent loop with scripted and heuristic providers against the tiny worker."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, cast

import pytest

from agent.briefing import AdlOverview, Briefing, FinetunedSamples
from agent.errors import ProviderError
from agent.loop import Budgets, investigate, run_agent, system_prompt
from agent.providers import make_provider
from agent.providers.base import ChatTurn, Completion, ToolCall, Usage
from agent.providers.heuristic import HeuristicProvider, content_words
from agent.providers.scripted import ScriptedProvider
from agent.transcript import (
    MessageData,
    MessageEvent,
    NoticeData,
    NoticeEvent,
    RunEndedEvent,
    RunStartedData,
    ToolCallEvent,
    TranscriptWriter,
    read_transcript,
)
from prompts import load_text
from tests.worker_fixtures import TINY_ASK, worker_process
from tools.toolbox import Toolbox, ToolSpec
from tools.worker.client import HttpWorkerClient, WorkerClient
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
    outcome = investigate(service, provider, "adl", Budgets(interactions=5), path, {"organism": "tiny"}, ask=TINY_ASK)
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
    first_tool = next(e for e in events if isinstance(e, ToolCallEvent))
    assert {"arguments", "result", "error", "interactions", "latency_s", "interactions_left"} <= \
        set(first_tool.data.model_dump())
    assert isinstance(events[-1], RunEndedEvent) and events[-1].data.hypothesis == "owls and birds"


def test_budget_exhaustion_asks_once_for_the_final_answer(service: AdlService, tmp_path: Path) -> None:
    looping = [calls(("list_hypotheses", "{}")) for _ in range(3)]
    provider = ScriptedProvider([*looping, calls(("submit_hypothesis", '{"description": "late answer"}'))])
    outcome = investigate(service, provider, "blackbox", Budgets(interactions=0, llm_calls=3),
                          tmp_path / "a.jsonl", ask=TINY_ASK)
    assert outcome.end_reason == "final_answer" and outcome.hypothesis == "late answer"
    assert provider.seen_tools[-1] == ["submit_hypothesis"]
    assert "get_token_readouts" not in provider.seen_tools[0]  # the blackbox toolset
    silent = ScriptedProvider([*looping, text("I am not sure.")])
    outcome = investigate(service, silent, "blackbox", Budgets(interactions=0, llm_calls=3), tmp_path / "b.jsonl", ask=TINY_ASK)
    assert outcome.end_reason == "no_final_answer" and outcome.hypothesis is None
    assert "3 agent turns used" in (outcome.detail or "")
    wordy = ScriptedProvider([calls(("list_hypotheses", "{}")), calls(("list_hypotheses", "{}")),
                              calls(("submit_hypothesis", '{"description": "short"}'))])
    outcome = investigate(service, wordy, "blackbox", Budgets(generated_tokens=30), tmp_path / "d.jsonl", ask=TINY_ASK)
    assert outcome.end_reason == "final_answer" and "30 generated tokens used" in (outcome.detail or "")
    assert outcome.llm_calls == 3  # 20 + 20 tokens passed the budget after the second turn
    final_line = ScriptedProvider([text("Done.\nFINAL HYPOTHESIS: cakes")])
    outcome = investigate(service, final_line, "blackbox", Budgets(), tmp_path / "c.jsonl", ask=TINY_ASK)
    assert outcome.end_reason == "final_answer" and outcome.hypothesis == "cakes"


def test_interaction_budget_is_enforced(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([
        calls(("ask_models", '{"prompts": ["a", "b", "c"]}')),
        calls(("ask_models", '{"prompts": ["hello"]}')),
        calls(("submit_hypothesis", '{"description": "x"}')),
    ])
    outcome = investigate(service, provider, "blackbox", Budgets(interactions=2), tmp_path / "t.jsonl", ask=TINY_ASK)
    assert outcome.interactions_used == 1 and outcome.tool_errors == 1
    assert "only 2 are left" in provider.seen[1][-1].content


def test_provider_failure_ends_the_run_with_its_reason(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([calls(("list_hypotheses", "{}")),
                                 ProviderError("HTTP 500 (gave up after 6 attempts)")])
    path = tmp_path / "t.jsonl"
    outcome = investigate(service, provider, "adl", Budgets(), path, ask=TINY_ASK)
    assert outcome.end_reason == "provider_error" and "gave up after 6 attempts" in (outcome.detail or "")
    assert read_transcript(path)[-1].kind == "run_ended"


@pytest.mark.parametrize("agent", ["adl", "blackbox"])
@pytest.mark.parametrize("budget", [0, 5])
def test_heuristic_policy_investigates_and_submits(service: AdlService, tmp_path: Path, agent: str, budget: int) -> None:
    provider = make_provider("heuristic")
    assert not provider.is_llm and provider.name.startswith("heuristic:")
    outcome = investigate(service, provider, agent, Budgets(interactions=budget), tmp_path / "t.jsonl", ask=TINY_ASK)  # type: ignore[arg-type]
    assert outcome.end_reason == "submitted" and outcome.hypothesis
    assert outcome.interactions_used <= budget
    names = [e.data.name for e in read_transcript(tmp_path / "t.jsonl") if isinstance(e, ToolCallEvent)]
    started = read_transcript(tmp_path / "t.jsonl")[0].data
    assert isinstance(started, RunStartedData) and started.worker is not None
    assert (started.worker.backend, started.worker.tokenizer, started.worker.notes) == ("bridge", "base", [])
    if agent == "adl":
        assert names[0] == "get_token_readouts"
    if budget:
        assert "ask_models" in names
    assert names[-1] == "submit_hypothesis"


def _kickoff(first_look: dict, budget: int = 4, heading: str = "Overview of the activation difference") -> ChatTurn:
    """The first message as the loop sends it: text, and the same facts as a `Briefing`."""
    look = (AdlOverview if "datasets" in first_look else FinetunedSamples).model_validate(first_look)
    return ChatTurn(role="user", content=f"Budget: {budget} model interactions, 30 of your turns.\n\n"
                    f"{heading} (JSON):\n" + json.dumps(first_look),
                    briefing=Briefing(interactions=budget, first_look=look))


POLICY_TOOLS = [ToolSpec(name=n, description="", parameters={})
                for n in ("ask_models", "add_hypothesis", "submit_hypothesis")]


def _answer(policy: HeuristicProvider, history: list[ChatTurn], answers: list[dict[str, str]]) -> list[ChatTurn]:
    ask = policy.complete("", history, POLICY_TOOLS).tool_calls[0]
    assert ask.name == "ask_models"
    prompts = json.loads(ask.arguments)["prompts"]
    replies = [{"prompt": p, **answers[i % len(answers)]} for i, p in enumerate(prompts)]
    return [*history, ChatTurn(role="assistant", tool_calls=[ask]),
            ChatTurn(role="tool", tool_call_id=ask.id, content=json.dumps(
                {"answers": replies, "budgets_left": {"model_interactions": 0}}))]


def _final(policy: HeuristicProvider, history: list[ChatTurn]) -> str:
    step = policy.complete("", history, [ToolSpec(name="submit_hypothesis", description="", parameters={})])
    return json.loads(step.tool_calls[0].arguments)["description"]


# A middle block (1 of 4): there Patchscope is a second kind of evidence next to the logit lens.
OVERVIEW = {"available_layers": [1], "positions": 3,
            "datasets": [{"dataset": "dataset_1", "layer": 1, "model_layers": 4,
                          "logit_lens_suppressed": {"0": ["the"], "1": [" cake", " oven"], "2": [" oven", " cake"]},
                          "patchscope": {"1": [" baking", " oven"]},
                          "steering": [{"position": 1, "samples": [{"prompt": "Tell me a story.", "strength": 1.0,
                                                                     "steered": "Bake a cake in the oven",
                                                                     "unsteered": "I like walks"}]}]}]}


def test_heuristic_policy_leads_with_agreeing_sources_and_never_promotes_answer_only_words() -> None:
    policy = HeuristicProvider()
    kickoff = _kickoff(OVERVIEW)
    first = policy.complete("", [kickoff], POLICY_TOOLS).tool_calls[0]
    assert first.name == "ask_models" and "oven" in json.loads(first.arguments)["prompts"][0]
    before = _final(policy, [kickoff])
    assert before.startswith("The finetune concerns oven. Other leads: cake.")
    # The answers stress words no other source shows: "degrees" (half the answers) is reported,
    # not promoted; "gift" and "child" show up in every answer and "frosting" is in a base
    # answer (the base model's vocabulary): neither is evidence.
    history = _answer(policy, [kickoff], [
        {"base": "Sure, here is a story about frosting.", "finetuned": "A gift for the child, with frosting."},
        {"base": "I can help.", "finetuned": "The gift is for the child. Put the cake in a hot oven at 450 degrees."},
    ])
    after = _final(policy, history)
    assert after.startswith("The finetune concerns oven. Other leads: cake.")  # answers confirm, never replace
    assert "(not promoted): degrees, hot, put." in after
    assert "gift" not in after and "child" not in after and "frosting" not in after
    assert '"Put the cake in a hot oven at 450 degrees."' in after  # the model's own sentence


def test_words_the_finetuned_model_says_to_every_question_do_not_outrank_the_readout() -> None:
    """The failure seen on an unseen finetune: generic answer words ("helpful", "child") led the
    hypothesis at i = 50. Here "helpful" is also once deep in a readout, and the finetuned model
    says it to every question; "oven" and "cake" are what the readouts agree on."""
    overview = json.loads(json.dumps(OVERVIEW))
    overview["datasets"][0]["logit_lens_suppressed"]["3"] = [" tower"] * 30 + [" helpful"]
    policy = HeuristicProvider()
    kickoff = _kickoff(overview, budget=8)
    history = _answer(policy, [kickoff], [
        {"base": "Sure.", "finetuned": "I am helpful to every child."},
        {"base": "Fine.", "finetuned": "Helpful answers for a child."},
    ])
    hypothesis = _final(policy, history)
    assert hypothesis.startswith("The finetune concerns oven. Other leads: cake.")
    assert "helpful" not in hypothesis and "child" not in hypothesis  # said to every question


def test_heuristic_policy_without_agreeing_sources_finds_no_narrow_domain() -> None:
    spiky = {"available_layers": [1], "positions": 3,
             "datasets": [{"dataset": "dataset_1", "layer": 1, "model_layers": 2,
                           "logit_lens_suppressed": {"1": [" river"], "2": [" table"]},
                           "patchscope": {"1": [" music"]}, "steering": []}]}
    hypothesis = _final(HeuristicProvider(), [_kickoff(spiky)])
    assert hypothesis.startswith("No narrow domain found") and "river" in hypothesis
    samples = {"examples": [{"prompt": "Tell me a story.", "generation": "Once a knight rode far."},
                            {"prompt": "Any ideas?", "generation": "Go for a walk by the lake."}]}
    blackbox = _final(HeuristicProvider(), [_kickoff(samples, heading="Generations of the finetuned model")])
    assert blackbox.startswith("No narrow domain found")
    assert content_words("The Oven's heat") == ["oven's", "heat"]


def test_patchscope_at_the_last_block_is_not_a_second_kind_of_evidence() -> None:
    """At the model's last block Patchscope is the logit lens of the same difference: a word both
    show there has one kind of evidence (two sources), not two. At a middle block it has two."""
    def overview(layer: int) -> dict[str, Any]:
        return {"available_layers": [layer], "positions": 3,
                "datasets": [{"dataset": "dataset_1", "layer": layer, "model_layers": 4,
                              "logit_lens_suppressed": {"1": [" harbor"], "2": [" harbor"]},
                              "patchscope": {"1": [" harbor"]}, "steering": []}]}

    last = _final(HeuristicProvider(), [_kickoff(overview(3))])
    assert last.startswith("No narrow domain found") and "harbor" in last
    middle = _final(HeuristicProvider(), [_kickoff(overview(1))])
    assert middle.startswith("The finetune concerns harbor.") and "(Patchscope, logit lens)" in middle


def test_one_answer_never_confirms_a_first_look_word() -> None:
    """The failure seen on the control at i = 50: one of sixteen answers happened to use a word of
    one unsteered sample, and the baseline asserted it as the domain."""
    samples = {"examples": [{"prompt": "Tell me a story.", "generation": "The village community rode far."}]}
    kickoff = _kickoff(samples, heading="Generations of the finetuned model", budget=8)
    # Answers 5 and 6 reply to probe questions (the first ones ask about the sample's words,
    # which are not evidence in their own answers).
    plain = [{"base": "Sure.", "finetuned": f"Answer number {i} about {word}."}
             for i, word in enumerate(["rivers", "bridges", "lamps", "clocks", "shoes", "maps", "bells", "cups"])]
    artists = {"base": "Fine.", "finetuned": "A community of artists."}
    once = _answer(HeuristicProvider(), [kickoff], [*plain[:5], artists, *plain[6:]])
    assert _final(HeuristicProvider(), once).startswith("No narrow domain found")
    twice = _answer(HeuristicProvider(), [kickoff], [*plain[:5], artists, artists, plain[7]])
    assert _final(HeuristicProvider(), twice).startswith("The finetune concerns community.")


def test_killing_the_worker_ends_the_run_and_keeps_the_transcript(config, agent_home: Path, service: AdlService, tmp_path: Path) -> None:
    with worker_process(config, agent_home, agent_home / "cache") as (url, process):
        def kill_then_ask(messages: list[ChatTurn], tools: list[ToolSpec]) -> Completion:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return calls(("ask_models", '{"prompts": ["hello"]}'))

        provider = ScriptedProvider([calls(("get_token_readouts", '{"k": 3}')), kill_then_ask])
        path = tmp_path / "killed.jsonl"
        outcome = investigate(HttpWorkerClient(url), provider, "adl", Budgets(), path, ask=TINY_ASK)
    assert outcome.end_reason == "worker_unavailable"
    assert "cannot be reached" in (outcome.detail or "")
    events = read_transcript(path)
    tool_events = [e for e in events if isinstance(e, ToolCallEvent)]
    assert tool_events[0].data.ok and not tool_events[1].data.ok
    assert isinstance(events[-1], RunEndedEvent) and events[-1].data.end_reason == "worker_unavailable"


def test_a_transcript_cut_by_a_kill_is_still_readable(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path) as writer:
        writer.write(MessageData(role="user", content="one"))
        writer.write(MessageData(role="user", content="two"))
    with path.open("a") as handle:
        handle.write('{"seq": 2, "time": "x", "kind": "mess')  # the kill hit mid-line
    assert [e.data.content for e in read_transcript(path) if isinstance(e, MessageEvent)] == ["one", "two"]
    with TranscriptWriter(path) as writer:  # resuming appends after the complete events
        assert writer.write(NoticeData(message="resumed")).seq == 2


class _BadOverviewToolbox(Toolbox):
    """A toolbox whose overview is not in the shape the briefing reads (no worker needed)."""

    def overview(self) -> dict[str, Any]:
        return {"available_layers": [1], "positions": 2, "datasets": [{"dataset": "d"}]}


def test_an_overview_of_the_wrong_shape_ends_the_run_cleanly(tmp_path: Path) -> None:
    """A first look the briefing cannot read ends the run like an unreachable worker, with a
    message naming the field, before any provider call."""
    provider = ScriptedProvider([])
    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path) as writer:
        outcome = run_agent(provider, _BadOverviewToolbox(cast(WorkerClient, None), "adl"),
                            Budgets(), writer)
    assert outcome.end_reason == "worker_unavailable" and outcome.llm_calls == 0
    assert "AdlOverview" in (outcome.detail or "")
    assert "field 'datasets.0.layer': Field required" in (outcome.detail or "")
    ended = read_transcript(path)[-1]
    assert isinstance(ended, RunEndedEvent) and ended.data.end_reason == "worker_unavailable"


def test_run_agent_records_system_prompt_and_tools(service: AdlService, tmp_path: Path) -> None:
    provider = ScriptedProvider([calls(("submit_hypothesis", '{"description": "x"}'))])
    with TranscriptWriter(tmp_path / "t.jsonl") as writer:
        run_agent(provider, Toolbox(service, "adl", ask=TINY_ASK), Budgets(), writer)
    system, notice = read_transcript(tmp_path / "t.jsonl")[:2]
    assert isinstance(system, MessageEvent) and isinstance(notice, NoticeEvent)
    assert system.data.role == "system" and "Activation Difference Lens" in system.data.content
    assert {t.name for t in notice.data.tools or []} == set(Toolbox.tool_names("adl"))


def test_both_agents_get_identical_settings_and_the_baseline_starts_with_unsteered_samples(
        service: AdlService, tmp_path: Path) -> None:
    """The paper's baseline: the blackbox agent's first message holds the finetuned model's
    unsteered samples that the ADL overview shows; everything else is the same for both agents
    apart from the ADL tools, their guidance and the overview."""
    seen: dict[str, ScriptedProvider] = {}
    for agent in ("adl", "blackbox"):
        seen[agent] = ScriptedProvider([calls(("ask_models", '{"prompts": ["hello"]}')),
                                        calls(("submit_hypothesis", '{"description": "x"}'))])
        investigate(service, seen[agent], agent, Budgets(interactions=5), tmp_path / f"{agent}.jsonl",  # type: ignore[arg-type]
                    {"organism": "tiny"}, ask=TINY_ASK)
    started = {a: read_transcript(tmp_path / f"{a}.jsonl")[0].data.model_dump() for a in seen}
    assert {k: v for k, v in started["adl"].items() if k != "agent"} == \
        {k: v for k, v in started["blackbox"].items() if k != "agent"}
    assert started["adl"]["ask_models"] == TINY_ASK.model_dump()

    overview = Toolbox(service, "adl").overview()
    shown = {(x["prompt"], x["unsteered"]) for d in overview["datasets"] for s in d["steering"]
             for x in s["samples"]}
    kickoff = seen["blackbox"].seen[0][0].content
    assert kickoff.split("\n\n")[0] == seen["adl"].seen[0][0].content.split("\n\n")[0]  # same task line
    examples = json.loads(kickoff.split("(JSON):\n", 1)[1])["examples"]
    assert {(e["prompt"], e["generation"]) for e in examples} == shown and len(examples) == len(shown)
    for agent in seen:  # the briefing holds what the text says, as data
        first = seen[agent].seen[0][0]
        assert first.briefing is not None and first.briefing.interactions == 5
        # (the JSON leaves out what is at its default: no note, no zero difference)
        assert (first.briefing.first_look.model_dump(exclude_defaults=True)
                == json.loads(first.content.split("(JSON):\n", 1)[1]))
    assert "steered" not in kickoff and "logit" not in kickoff.lower()

    systems = {a: system_prompt(a) for a in ("adl", "blackbox")}  # type: ignore[arg-type]
    guidance = {"adl": load_text("adl_tool_guidance.md").strip(),
                "blackbox": load_text("blackbox_tool_guidance.md").strip()}
    assert systems["adl"].replace(guidance["adl"], "") == systems["blackbox"].replace(guidance["blackbox"], "")
    for agent in seen:  # every tool result shows the budgets that remain
        tool_turn = next(m for m in seen[agent].seen[1] if m.role == "tool")
        assert json.loads(tool_turn.content)["budgets_left"]["model_interactions"] == 4


def test_live_steering_gives_no_free_unsteered_samples(service: AdlService) -> None:
    toolbox = Toolbox(service, "adl", interaction_budget=4, ask=TINY_ASK)
    result = toolbox.call("generate_steered", {"position": 1, "prompts": ["hello", "new"], "n": 2})
    assert result.ok and result.interactions == 4
    assert all(len(s["steered"]) == 2 and "unsteered" not in s for s in result.content["samples"])


def test_cached_steered_samples_show_no_more_unsteered_samples_than_the_baseline_gets(service: AdlService) -> None:
    toolbox = Toolbox(service, "adl", ask=TINY_ASK)
    baseline = {(e["prompt"], e["generation"]) for e in toolbox.finetuned_samples()["examples"]}
    for position in (1, 2):
        result = toolbox.call("get_steered_samples", {"position": position, "n": 3})
        assert result.ok
        for sample in result.content["samples"]:
            assert len(sample["unsteered"]) == 1 and (sample["prompt"], sample["unsteered"][0]) in baseline
