"""The agent loop driving the real OpenAI and Anthropic SDKs against the fake wire server,
and the secrets sentinel: an API key never reaches anything written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.loop import Budgets, investigate
from agent.providers.anthropic_provider import AnthropicProvider
from agent.providers.openai_provider import OpenAIProvider
from agent.retry import RetryPolicy
from agent.transcript import MessageEvent, ToolCallEvent, read_transcript
from tests.fake_llm_server import FakeLLMServer
from tests.worker_fixtures import TINY_ASK, worker_process
from tools.worker.schema import ReadoutRequest, ReadoutResponse
from tools.worker.service import AdlService

FAST_RETRY = RetryPolicy(initial_wait_s=0.01, max_wait_s=2, jitter_s=0)
SENTINEL = "sk-SENTINEL-9d8c7b6a5f4e3d2c1b0a"


@pytest.fixture(scope="module")
def home(tiny_home: Path) -> Path:
    return tiny_home


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config


@pytest.fixture(scope="module")
def service(tiny_service: AdlService) -> AdlService:
    return tiny_service


class FlakyReadouts:
    """A worker client whose Patchscope readouts raise an unexpected error (a broken tool)."""

    def __init__(self, service: AdlService) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def readouts(self, request: ReadoutRequest) -> ReadoutResponse:
        if request.method == "patchscope":
            raise RuntimeError("CUDA error: device-side assert triggered")
        return self._service.readouts(request)


def _script(server: FakeLLMServer, api: str) -> None:
    answer = server.queue_openai if api == "openai" else server.queue_anthropic
    error = server.queue_openai_error if api == "openai" else server.queue_anthropic_error
    error(429, "slow down", headers={"Retry-After": "1"})
    answer(tool_calls=[("t1", "ask_models", '{"prompts": ["hello", "what is the sky"]}'),
                       ("t2", "get_token_readouts", '{"positions": [1], "k": 3}')],
           input_tokens=1000, output_tokens=50)
    error(500, "internal")
    answer(tool_calls=[("t3", "ask_models", '{"prompts": [')], input_tokens=1200, output_tokens=20)
    answer(tool_calls=[("t4", "get_token_readouts", '{"method": "patchscope"}')],
           input_tokens=1300, output_tokens=20)
    answer(tool_calls=[("t5", "ask_models", '{"prompts": ["a", "b", "c", "d"]}')],
           input_tokens=1400, output_tokens=20)
    answer(text="I think it is about birds.", tool_calls=[
        ("t6", "submit_hypothesis", '{"description": "The finetune is about owls."}')],
        input_tokens=1500, output_tokens=30)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_loop_with_real_sdks(api: str, service: AdlService, tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        _script(server, api)
        if api == "openai":
            provider: Any = OpenAIProvider("gpt-5", api_key="sk-test", base_url=server.openai_url, retry=FAST_RETRY)
        else:
            provider = AnthropicProvider("claude-sonnet-4-5", api_key="sk-test",
                                         base_url=server.anthropic_url, retry=FAST_RETRY)
        path = tmp_path / "run.jsonl"
        outcome = investigate(FlakyReadouts(service), provider, "adl", Budgets(interactions=3), path, ask=TINY_ASK)
        requests = server.openai_requests if api == "openai" else server.anthropic_requests

    assert outcome.end_reason == "submitted" and outcome.hypothesis == "The finetune is about owls."
    assert outcome.llm_calls == 5 and len(requests) == 7  # two failed attempts were retried
    assert outcome.interactions_used == 2  # the 4-prompt ask exceeded the 1 interaction left
    assert outcome.tool_calls == 6 and outcome.tool_errors == 3
    assert outcome.input_tokens == 1000 + 1200 + 1300 + 1400 + 1500
    assert outcome.cost_usd is not None and outcome.cost_usd > 0

    events = read_transcript(path)
    llm_calls = [e for e in events if e.kind == "llm_call"]
    assert [e.data.attempts for e in llm_calls] == [2, 2, 1, 1, 1]  # type: ignore[union-attr]
    assert llm_calls[0].data.latency_s >= 0.9  # type: ignore[union-attr]  # Retry-After: 1 was honoured
    tools = {e.data.id: e.data for e in events if isinstance(e, ToolCallEvent)}
    assert tools["t1"].ok and tools["t1"].interactions == 2 and tools["t1"].interactions_left == 1
    assert "not valid JSON" in (tools["t3"].error or "")
    assert "RuntimeError: CUDA error" in (tools["t4"].error or "")
    assert "only 1 are left" in (tools["t5"].error or "")
    assert tools["t3"].arguments == '{"prompts": ['  # recorded exactly as the model sent it
    assert events[-1].kind == "run_ended"
    assert sum(1 for e in events if isinstance(e, MessageEvent) and e.data.role == "assistant") == 5

    last = requests[-1].body
    sent = json.dumps(last["messages"])
    assert "not valid JSON" in sent and "CUDA error" in sent  # errors went back to the model
    names = [t["function"]["name"] if api == "openai" else t["name"] for t in last["tools"]]
    assert "get_token_readouts" in names and "submit_hypothesis" in names


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_api_keys_never_reach_anything_written(config, home: Path, service: AdlService, tmp_path: Path) -> None:
    results = tmp_path / "results"
    with FakeLLMServer() as server, worker_process(config, home, home / "cache") as (url, _):
        server.queue_openai(tool_calls=[("a", "ask_models", json.dumps({"prompts": [f"say {SENTINEL}"]}))])
        server.queue_openai(tool_calls=[("b", "submit_hypothesis", '{"description": "birds"}')])
        server.queue_openai_error(401, f"Incorrect API key provided: {SENTINEL}")
        env = {**os.environ, "OPENAI_API_KEY": SENTINEL, "OPENAI_BASE_URL": server.openai_url,
               "ADL_RESULTS": str(results), "ADL_HOME": str(home / "cache")}
        outputs = []
        for _ in range(2):  # a successful run, then one that fails authentication
            done = subprocess.run(
                [sys.executable, "-m", "evals.cli", "-v", "agent", "run", "tiny", "--worker-url", url,
                 "--provider", "openai:gpt-5", "--budget", "2"],
                check=False, capture_output=True, text=True, env=env, timeout=120,
            )
            outputs.append(done.stdout + done.stderr)
        assert server.openai_requests[0].headers["authorization"] == f"Bearer {SENTINEL}"
    assert "hypothesis: birds" in outputs[0]
    assert "authentication failed" in outputs[1] and "OPENAI_API_KEY" in outputs[1]
    transcripts = list((results / "transcripts").glob("*.jsonl"))
    assert len(transcripts) == 2
    assert "[REDACTED]" in _all_text(results)  # the key the model echoed was scrubbed
    for text in [*outputs, _all_text(results), _all_text(home)]:
        assert SENTINEL not in text
        assert SENTINEL[3:20] not in text
