"""LLM judges for the ADL engine: through the real SDK (fake server), and wired into the
pipeline on the tiny pair."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.judges import JudgeError, LLMCoherenceGrader, LLMScaleChooser
from agent.providers import make_provider
from agent.providers.base import ChatTurn, Completion, ToolCall
from agent.providers.openai_provider import OpenAIProvider
from agent.providers.scripted import ScriptedProvider
from agent.retry import RetryPolicy
from tests.fake_llm_server import FakeLLMServer
from tools.adl.pipeline import AdlSettings, judge_identity, run_adl, run_steering
from tools.adl.readouts import TokenScore
from tools.adl.steering import SteeringSettings
from tools.toolbox import ToolSpec

FAST_RETRY = RetryPolicy(initial_wait_s=0.01, max_wait_s=1, jitter_s=0)


def _scores(words: list[str]) -> list[TokenScore]:
    return [TokenScore(token=w, token_id=i, probability=0.1) for i, w in enumerate(words)]


def test_llm_judges_through_the_openai_sdk() -> None:
    with FakeLLMServer() as server:
        server.queue_openai(tool_calls=[("a", "record_coherence", '{"verdicts": [true]}')])  # too few
        server.queue_openai(tool_calls=[("b", "record_coherence", '{"verdicts": [true, false]}')])
        server.queue_openai(tool_calls=[("c", "choose_scale", '{"scale": 7, "reason": "x"}')])  # not offered
        server.queue_openai(tool_calls=[("d", "choose_scale", '{"scale": 2.0, "reason": "cake words"}')])
        provider = OpenAIProvider("gpt-5", api_key="sk-test", base_url=server.openai_url, retry=FAST_RETRY)
        verdicts = LLMCoherenceGrader(provider).grade(["Tell me a story.", "Hi"],
                                                      ["Once upon a time a baker...", "cake cake cake cake"])
        scale = LLMScaleChooser(provider).choose({1.0: _scores(["the", "a"]), 2.0: _scores(["cake", "oven"])})
        sent = json.dumps(server.openai_requests[0].body)
    assert verdicts == [True, False] and scale == 2.0
    assert "Once upon a time a baker" in sent and "record_coherence" in sent


def test_judge_settings_hold_the_endpoint_in_effect_without_credentials(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_BASE_URL, ANTHROPIC_BASE_URL or the spec's URL is part of a judge's settings (so
    of the cache keys), with credentials masked."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-judge-test-0123456789abcdef")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-judge-test-0123456789")
    for variable in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    plain = LLMCoherenceGrader(make_provider("openai:gpt-5"))
    default = plain.settings
    assert default.base_url is None
    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:pw@proxy.example/v1?api_key=hidden&region=eu")
    proxied = LLMCoherenceGrader(make_provider("openai:gpt-5"))
    assert proxied.settings.base_url == "https://***@proxy.example/v1?api_key=***&region=eu"
    assert judge_identity(proxied) != judge_identity(plain)  # another steering key
    assert proxied.settings.model_copy(update={"base_url": None}) == default  # only the endpoint
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example/anthropic")
    chooser = LLMScaleChooser(make_provider("anthropic:claude-x"))
    assert chooser.settings.base_url == "https://gateway.example/anthropic"
    compatible = LLMCoherenceGrader(make_provider("openai-compatible:http://localhost:8000/v1:m"))
    assert compatible.settings.base_url == "http://localhost:8000/v1"
    dumped = proxied.settings.model_dump_json()
    assert "pw@" not in dumped and "hidden" not in dumped and "sk-" not in dumped


def test_llm_judge_gives_up_on_invalid_output() -> None:
    provider = ScriptedProvider([Completion(text="no", model="s")] * 3)
    with pytest.raises(JudgeError, match="invalid output 3 times"):
        LLMScaleChooser(provider).choose({1.0: _scores(["a"]), 2.0: _scores(["b"])})


def _judge(messages: list[ChatTurn], tools: list[ToolSpec]) -> Completion:
    """A scripted judge: every reply coherent; always the largest Patchscope scale."""
    prompt = messages[-1].content
    if tools[0].name == "record_coherence":
        count = int(re.search(r"\((\d+) verdicts\)", prompt).group(1))  # type: ignore[union-attr]
        arguments = json.dumps({"verdicts": [True] * count})
    else:
        scales = [float(s) for s in re.search(r"one of: ([\d., ]+)\)", prompt).group(1).split(",")]  # type: ignore[union-attr]
        arguments = json.dumps({"scale": max(scales), "reason": "largest"})
    return Completion(tool_calls=[ToolCall(id="j", name=tools[0].name, arguments=arguments)], model="judge")


def test_judges_drive_the_pipeline(tiny_config, tiny_model_dir: Path, adl_home: Path) -> None:
    from tools.models import load_model_pair

    pair = load_model_pair(tiny_config.pair)
    settings = AdlSettings(layers=(3,), n_positions=3, n_samples=20, corpus=tiny_config.datasets[0],
                           sample_unit="document", readout_k=10, patchscope_scales=(1.0, 4.0),
                           random_directions=16, primary_layer=3)
    judge = ScriptedProvider([_judge] * 20, model="judge")
    offline = run_adl(pair, settings, show_progress=False)
    judged = run_adl(pair, settings, show_progress=False, scale_chooser=LLMScaleChooser(judge))
    assert judged.path != offline.path  # the judge is part of the cache key
    positions = judged.readouts.layers[0].positions
    assert all(p.patchscope_scale == 4.0 and p.patchscope_scale_rule == "llm:scripted:judge" for p in positions)
    assert offline.readouts.layers[0].positions[0].patchscope_scale_rule == "offline"

    steering = SteeringSettings(max_strength=2.0, search_steps=3, samples_per_strength=2, search_max_new_tokens=4,
                      final_max_new_tokens=4)
    results = run_steering(pair, judged, steering, positions=[1], prompts=["hello"], show_progress=False,
                           coherence_grader=LLMCoherenceGrader(judge))
    assert results[0].samples[0].strength == pytest.approx(2.0 * (1 - 2 ** -3))  # always coherent
