"""The agent loop on servers with small context windows and on models that never call tools
(issue 16), through the real OpenAI SDK against the fake wire server and the tiny worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from agent.context import ContextKeeper
from agent.loop import OVERVIEW_HEADING, Budgets, investigate
from agent.providers import ProviderOptions, make_provider
from agent.providers.base import ChatTurn, ToolCall
from agent.transcript import CompactionEvent, NoticeEvent, read_transcript
from tests.fake_llm_server import FakeLLMServer, FakeReply, RecordedRequest
from tests.worker_fixtures import TINY_ASK
from tools.worker.service import AdlService

CHARS_PER_TOKEN = 4  # the fake server's tokenizer


def prompt_tokens(request: RecordedRequest) -> int:
    """The fake server's count of a Chat Completions request's prompt tokens."""
    body = request.body
    size = sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or []))
               for m in body["messages"])
    return (size + len(json.dumps(body.get("tools") or []))) // CHARS_PER_TOKEN


def windowed(window: int, script: Callable[[RecordedRequest, int], FakeReply]) -> Callable[[RecordedRequest], FakeReply]:
    """A responder with a context window: prompts over `window` tokens get the 400 that
    llama.cpp and vLLM send; the others get `script(request, prompt_tokens)`."""
    def respond(request: RecordedRequest) -> FakeReply:
        tokens = prompt_tokens(request)
        limit = request.body.get("max_tokens") or request.body.get("max_completion_tokens") or 0
        if tokens + limit > window:
            return FakeReply(status=400, code="context_length_exceeded", error_type="invalid_request_error",
                             message=f"This model's maximum context length is {window} tokens. However, "
                                     f"you requested {tokens + limit} tokens ({tokens} in the messages, "
                                     f"{limit} in the completion).")
        return script(request, tokens)
    return respond


def readouts_then_submit(calls_before_submit: int) -> Callable[[RecordedRequest, int], FakeReply]:
    """An agent that reads large readouts `calls_before_submit` times, then submits."""
    def script(request: RecordedRequest, tokens: int) -> FakeReply:
        turn = sum(1 for m in request.body["messages"] if m["role"] == "assistant")
        if turn < calls_before_submit:
            return FakeReply(input_tokens=tokens, tool_calls=[
                (f"r{turn}", "get_token_readouts", '{"k": 30, "method": "logit_lens"}')])
        return FakeReply(input_tokens=tokens, tool_calls=[
            ("s", "submit_hypothesis", '{"description": "birds and the sky"}')])
    return script


def compatible(server: FakeLLMServer, **options: object):
    return make_provider(f"openai-compatible:{server.openai_url}:local-model",
                         options=ProviderOptions(**options))  # type: ignore[arg-type]


def test_a_small_context_window_compacts_and_the_run_still_submits(tiny_service: AdlService,
                                                                   tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        first = len(json.dumps(tiny_service.overview().model_dump())) // CHARS_PER_TOKEN
        window = first + 2500  # the overview fits, eight large readouts do not
        server.responders["openai"] = windowed(window, readouts_then_submit(8))
        provider = compatible(server, context_window=window, max_output_tokens=256)
        path = tmp_path / "small.jsonl"
        outcome = investigate(tiny_service, provider, "adl", Budgets(interactions=5), path, ask=TINY_ASK)
        refused = [r for r in server.openai_requests if prompt_tokens(r) + 256 > window]
    assert outcome.end_reason == "submitted" and outcome.hypothesis == "birds and the sky", outcome.detail
    assert outcome.compactions >= 1 and "compacted" in (outcome.detail or "")
    assert not refused  # compaction kept every request inside the window
    events = read_transcript(path)
    compactions = [e for e in events if isinstance(e, CompactionEvent)]
    assert len(compactions) == outcome.compactions
    assert all(e.data.tokens_after < e.data.tokens_before for e in compactions)
    last = server.openai_requests[-1].body["messages"]
    assert OVERVIEW_HEADING in last[1]["content"]  # the overview is kept
    assert any("[result elided" in (m.get("content") or "") for m in last if m["role"] == "tool")


def test_a_context_length_error_compacts_once_and_retries(tiny_service: AdlService, tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        script = readouts_then_submit(4)
        server.responders["openai"] = lambda request: script(request, prompt_tokens(request))
        # Requests 1-3 are answered; the 4th gets the server's context error once, then the
        # responder answers the compacted retry.
        server.queue("openai", FakeReply(tool_calls=[("r0", "get_token_readouts", '{"k": 30}')]))
        server.queue("openai", FakeReply(tool_calls=[("r1", "get_token_readouts", '{"k": 30}')]))
        server.queue("openai", FakeReply(tool_calls=[("r2", "get_token_readouts", '{"k": 30}')]))
        server.queue("openai", FakeReply(status=400, code="context_length_exceeded",
                                         message="This model's maximum context length is 32768 tokens. "
                                                 "However, your messages resulted in 40000 tokens."))
        provider = compatible(server)  # no context window known: only the server's error tells
        path = tmp_path / "refused.jsonl"
        outcome = investigate(tiny_service, provider, "adl", Budgets(interactions=5), path, ask=TINY_ASK)
        requests = server.openai_requests
    assert outcome.end_reason == "submitted", outcome.detail
    assert len(requests) == 6 and outcome.compactions == 1
    (compaction,) = [e for e in read_transcript(path) if isinstance(e, CompactionEvent)]
    assert "refused" in compaction.data.reason and compaction.data.elided >= 1
    retried = requests[4].body["messages"]
    assert any("[result elided" in (m.get("content") or "") for m in retried if m["role"] == "tool")


def test_an_output_limit_larger_than_the_servers_window_ends_the_run_in_plain_words(
        tiny_service: AdlService, tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        server.queue("openai", FakeReply(status=400, code="context_length_exceeded",
                                         message="This model's maximum context length is 2048 tokens. "
                                                 "However, you requested 6096 tokens (2000 in the "
                                                 "messages, 4096 in the completion)."))
        outcome = investigate(tiny_service, compatible(server), "adl", Budgets(), tmp_path / "o.jsonl",
                              ask=TINY_ASK)
    assert outcome.end_reason == "context_exceeded"
    assert "output limit of 4,096 tokens does not fit the context window of 2,048" in (outcome.detail or "")


def test_an_overview_larger_than_the_window_stops_before_any_request(tiny_service: AdlService,
                                                                     tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        provider = compatible(server, context_window=600, max_output_tokens=256)
        outcome = investigate(tiny_service, provider, "adl", Budgets(), tmp_path / "big.jsonl", ask=TINY_ASK)
        assert server.requests == []
    assert outcome.end_reason == "context_exceeded" and outcome.llm_calls == 0
    assert "context window 600 exceeded by the overview alone" in (outcome.detail or "")


def test_a_model_that_never_calls_tools_is_asked_for_its_answer_in_plain_words(
        tiny_service: AdlService, tmp_path: Path) -> None:
    def chatty(request: RecordedRequest) -> FakeReply:
        last = request.body["messages"][-1]["content"] or ""
        if last.startswith("Stop investigating now"):
            return FakeReply(text="I think so.\nFINAL HYPOTHESIS: the sky")
        return FakeReply(text="Let me think about the overview some more.")

    with FakeLLMServer() as server:
        server.responders["openai"] = chatty
        path = tmp_path / "chatty.jsonl"
        outcome = investigate(tiny_service, compatible(server), "adl", Budgets(), path, ask=TINY_ASK)
        assert len(server.openai_requests) == 4  # a turn, two nudges, the final-answer request
    assert outcome.end_reason == "final_answer" and outcome.hypothesis == "the sky"
    assert outcome.detail == "asked for the final answer: the model made no tool call in 3 turns"
    notices = [e for e in read_transcript(path) if isinstance(e, NoticeEvent) and e.data.no_tool_calls]
    assert notices and notices[0].data.message == "the model made no tool call in 3 turns"


def test_results_the_model_has_not_seen_are_never_elided() -> None:
    """After an assistant turn with parallel calls, its results are new to the model: eliding
    one would make the model call (and pay for) it again."""
    calls = [ToolCall(id=f"c{i}", name="ask_models", arguments="{}") for i in range(4)]
    messages = [ChatTurn(role="user", content="overview " * 200),
                ChatTurn(role="assistant", tool_calls=calls[:1]),
                ChatTurn(role="tool", content="old " * 500, tool_call_id="c0", tool_name="ask_models"),
                ChatTurn(role="assistant", tool_calls=calls),
                *[ChatTurn(role="tool", content="new " * 500, tool_call_id=c.id, tool_name="ask_models")
                  for c in calls]]
    keeper = ContextKeeper(window=1500, max_output_tokens=100)
    compaction = keeper.compact("system", messages, [], "test", force=True)
    assert compaction is not None and compaction.elided == 1
    assert messages[2].content.startswith("[result elided")
    assert all(m.content.startswith("new") for m in messages[4:])
