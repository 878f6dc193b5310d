"""The worker and the toolbox: in-process and over HTTP (a real worker process)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.worker_fixtures import TINY_ASK, TINY_STEERING_PROMPTS, worker_process
from tools.errors import AdlError, WorkerUnavailableError
from tools.toolbox import Toolbox
from tools.worker.client import HttpWorkerClient
from tools.worker.http import WorkerAuthError, check_bind
from tools.worker.queue import ChatJob, ModelQueue, WorkerBusyError, WorkerStoppingError
from tools.worker.schema import ChatRequest, ReadoutRequest
from tools.worker.service import LAST_BLOCK_PATCHSCOPE_NOTE, AdlService

TOKEN = "test-token-7f3a-0123456789abcdef-long"


@pytest.fixture(scope="module")
def worker_home(tiny_home: Path) -> Path:
    return tiny_home


@pytest.fixture(scope="module")
def worker_config(tiny_config):
    return tiny_config


@pytest.fixture(scope="module")
def service(tiny_service: AdlService) -> AdlService:
    return tiny_service


@pytest.fixture(scope="module")
def worker_url(service: AdlService, worker_config, worker_home: Path) -> Iterator[str]:
    """A real worker process on loopback, sharing the cache the in-process service filled."""
    with worker_process(worker_config, worker_home, worker_home / "cache") as (url, _):
        yield url


@pytest.fixture(params=["in-process", "http"])
def client(request: pytest.FixtureRequest, service: AdlService) -> Iterator[Any]:
    if request.param == "in-process":
        yield service
    else:
        http = HttpWorkerClient(request.getfixturevalue("worker_url"))
        yield http
        http.close()


TOOL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("ask_models", {"prompts": ["hello", "what is the sky"]}),
    ("get_token_readouts", {}),
    ("get_token_readouts", {"layer": 2, "positions": [0, 2], "method": "logit_lens", "k": 5}),
    ("get_token_readouts", {"method": "patchscope", "k": 50}),
    ("get_steered_samples", {"position": 1}),
    ("get_steered_samples", {"position": 2, "prompts": ["hello"], "n": 5}),
    ("generate_steered", {"position": 2, "prompts": ["hello", "a new prompt"], "n": 2}),
    ("add_hypothesis", {"description": "birds"}),
    ("update_hypothesis", {"hypothesis_id": 1, "status": "supported", "reasoning": "owl tokens"}),
    ("list_hypotheses", {}),
    ("submit_hypothesis", {"description": "The finetune is about owls."}),
]


def test_every_tool_answers_the_same_over_http_and_in_process(service: AdlService, worker_url: str) -> None:
    http = HttpWorkerClient(worker_url)
    local, remote = Toolbox(service, "adl", ask=TINY_ASK), Toolbox(http, "adl", ask=TINY_ASK)
    for name, arguments in TOOL_CALLS:
        expected, got = local.call(name, arguments), remote.call(name, arguments)
        assert expected.ok, (name, expected.error)
        assert got.model_dump() == expected.model_dump(), name
    assert local.overview() == remote.overview()
    assert http.info().label == "tiny" and http.info().status == "ready"
    assert http.info().backend == "bridge"  # the tiny Llama runs on the bridge, no fallback
    assert http.info().tokenizer == "base"  # the tiny adapter ships no tokenizer
    assert http.info().notes == []  # nor records another base
    assert remote.submitted == "The finetune is about owls."
    assert remote.interactions_used == 2 + 4


def test_results_carry_the_requested_content(service: AdlService) -> None:
    toolbox = Toolbox(service, "adl", ask=TINY_ASK)
    answers = toolbox.call("ask_models", {"prompts": ["hello"]}).content["answers"]
    assert set(answers[0]) == {"prompt", "base", "finetuned"}
    patch = toolbox.call("get_token_readouts", {"method": "patchscope", "k": 50})
    assert "note" in patch.content and "showing 10" in patch.content["note"]
    # The tiny model's primary layer 3 is its last block: Patchscope there is the logit lens.
    assert LAST_BLOCK_PATCHSCOPE_NOTE in patch.content["note"]
    assert "note" not in toolbox.call("get_token_readouts", {"method": "patchscope", "layer": 2, "k": 5}).content
    assert toolbox.overview()["datasets"][0]["patchscope_note"] == LAST_BLOCK_PATCHSCOPE_NOTE
    assert all(len(tokens) == 10 for tokens in patch.content["positions"].values())
    steered = toolbox.call("get_steered_samples", {"position": 1}).content
    assert [s["prompt"] for s in steered["samples"]] == TINY_STEERING_PROMPTS
    # The search's unsteered control is kept; an uninformative search is said so.
    control = next(iter(service.steering.values()))[0].control
    assert control is not None and next(iter(control.pass_rates)) == "1.2"
    assert ("search was uninformative" in steered.get("note", "")) == (not control.calibrated)
    overview = toolbox.overview()
    assert overview["datasets"][0]["dataset"] == "dataset_1"
    assert "corpus" not in json.dumps(overview)  # the dataset's real name is never shown
    assert len(overview["datasets"][0]["steering"]) == 2


BAD_CALLS: list[tuple[str, Any, str, list[str]]] = [
    ("get_token_readouts", {"positions": [7]}, "Unknown position 7", ["positions"]),
    ("get_token_readouts", {"k": 500}, "less than or equal to 100", ["k"]),
    ("get_token_readouts", {"layer": 1}, "Layer 1 was not computed", ["layer"]),
    ("get_token_readouts", {"dataset": "wiki"}, "Unknown dataset 'wiki'", ["dataset"]),
    ("get_steered_samples", {"position": 0}, "steered positions: [1, 2]", ["position"]),
    ("get_steered_samples", {"position": 7}, "Unknown position 7", ["position"]),
    ("get_steered_samples", {"position": 1, "prompts": ["unseen"]}, "generate_steered", ["prompts"]),
    ("ask_models", {"prompts": []}, "at least 1 item", ["prompts"]),
    ("ask_models", {"prompts": ["a", "b", "c", "d", "e"]}, "Too many prompts", ["prompts"]),
    ("ask_models", {"prompts": "hello"}, "valid list", ["prompts"]),
    ("ask_models", {"prompts": ["  "]}, "prompt 0 is empty", []),
    ("generate_steered", {"position": "one", "prompts": ["x"]}, "valid integer", ["position"]),
    ("generate_steered", {"position": 1, "prompts": ["x"], "n": 9}, "above the limit", ["n"]),
    ("get_token_readouts", "{not json", "not valid JSON", []),
    ("get_token_readouts", {"colour": "red"}, "Extra inputs", ["colour"]),
    ("update_hypothesis", {"hypothesis_id": 3, "status": "supported", "reasoning": "x"}, "No hypothesis 3", ["hypothesis_id"]),
]


@pytest.mark.parametrize(("name", "arguments", "message", "fields"), BAD_CALLS)
def test_bad_tool_input_is_a_structured_error(client: Any, name: str, arguments: Any, message: str,
                                              fields: list[str]) -> None:
    toolbox = Toolbox(client, "adl", interaction_budget=10, ask=TINY_ASK)
    result = toolbox.call(name, arguments)
    assert not result.ok and message in (result.error or "")
    assert set(fields) <= set(result.error_fields)
    assert toolbox.interactions_used == 0
    assert toolbox.call("get_token_readouts", {"k": 3}).ok  # still serving


def test_budget_and_agent_kinds(service: AdlService) -> None:
    toolbox = Toolbox(service, "adl", interaction_budget=3, ask=TINY_ASK)
    assert toolbox.call("ask_models", {"prompts": ["hello", "sky"]}).interactions == 2
    refused = toolbox.call("generate_steered", {"position": 1, "prompts": ["hello"], "n": 2})
    assert not refused.ok and "only 1 are left" in (refused.error or "")
    assert toolbox.interactions_left == 1
    blackbox = Toolbox(service, "blackbox")
    assert [s.name for s in blackbox.specs()] == Toolbox.tool_names("blackbox")
    assert not blackbox.call("get_token_readouts", {}).ok
    spec = {s.name: s for s in Toolbox(service, "adl").specs()}["get_token_readouts"]
    assert spec.parameters["properties"]["method"]["enum"] == ["logit_lens", "logit_lens_suppressed", "patchscope"]
    assert spec.description.startswith("Top tokens of the activation difference")


RAW_BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("/readouts", {"dataset": "dataset_1", "positions": [7]}, 400, "positions"),
    ("/readouts", {"dataset": "dataset_1", "k": 500}, 422, "k"),
    ("/readouts", {"dataset": "dataset_1", "extra": 1}, 422, "extra"),
    ("/chat", {"prompts": []}, 422, "prompts"),
    ("/chat", {"prompts": ["a", "b", "c", "d", "e"]}, 400, "prompts"),
    ("/chat", {"prompts": "hello"}, 422, "prompts"),
    ("/chat", {"prompts": ["  "]}, 422, "prompts"),
    ("/chat", {"prompts": ["hi"], "max_new_tokens": 999}, 400, "max_new_tokens"),
    ("/generate-steered", {"dataset": "dataset_1", "position": "one", "prompts": ["x"]}, 422, "position"),
    ("/generate-steered", {"dataset": "dataset_1", "position": 1, "prompts": ["x"], "n": 9}, 400, "n"),
    ("/steered-samples", {"dataset": "dataset_1", "position": 0}, 400, "position"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), RAW_BAD_REQUESTS)
def test_raw_bad_requests_name_the_field(worker_url: str, path: str, body: dict[str, Any], status: int,
                                         field: str) -> None:
    answer = httpx.post(f"{worker_url}{path}", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_argument" and field in error["fields"], error


def test_raw_http_errors_are_structured_and_the_worker_keeps_serving(worker_url: str) -> None:
    bad = httpx.post(f"{worker_url}/readouts", json={"dataset": "dataset_1", "positions": "x"})
    assert bad.status_code == 422
    body = bad.json()["error"]
    assert body["type"] == "invalid_argument" and "positions" in body["fields"]
    missing = httpx.post(f"{worker_url}/nowhere", json={})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    huge = httpx.post(f"{worker_url}/chat", content=b"x" * 30_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "too_large"
    streamed = httpx.post(f"{worker_url}/chat", content=(b"x" * 10_000 for _ in range(3)),
                          headers={"content-type": "application/json"})  # no Content-Length
    assert streamed.status_code == 413 and streamed.json()["error"]["type"] == "too_large"
    not_json = httpx.post(f"{worker_url}/chat", content=b"{oops", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert httpx.get(f"{worker_url}/health").json() == {"status": "ok"}


def test_concurrent_asks_complete_and_memory_stays_bounded(worker_url: str) -> None:
    """A bounded load test: 50 concurrent ask requests on loopback (numbers: benchmarks/)."""
    http = HttpWorkerClient(worker_url)
    before = http.info().rss_bytes

    def one(i: int) -> list[str]:
        own = HttpWorkerClient(worker_url)
        try:
            response = own.chat(ChatRequest(prompts=[f"hello {i % 5}"], max_new_tokens=8))
            return [r.replies["finetuned"] for r in response.replies]
        finally:
            own.close()

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert len(results) == 50 and all(len(r) == 1 for r in results)
    info = http.info()
    assert info.queue_length == 0
    assert info.rss_bytes - before < 300 * 2**20


def test_non_loopback_needs_a_token(worker_config, worker_home: Path, service: AdlService) -> None:
    with pytest.raises(WorkerAuthError, match="ADL_WORKER_TOKEN"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    env = {k: v for k, v in os.environ.items() if k != "ADL_WORKER_TOKEN"}
    refused = subprocess.run(
        [sys.executable, "-m", "evals.cli", "worker", "serve", "--organism", "cake_bake",
         "--host", "0.0.0.0"], check=False, capture_output=True, text=True, env=env, timeout=120,
    )
    assert refused.returncode == 2 and "without a token" in refused.stderr
    with worker_process(worker_config, worker_home, worker_home / "cache", host="0.0.0.0",
                        token=TOKEN) as (url, _):
        assert httpx.get(f"{url}/health").status_code == 200
        anonymous = httpx.post(f"{url}/readouts", json={"dataset": "dataset_1"})
        assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "unauthorized"
        wrong = httpx.get(f"{url}/info", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        odd = httpx.get(f"{url}/info", headers={"Authorization": "Bearer t\u00f6ken".encode()})
        assert odd.status_code == 401
        assert httpx.get(f"{url}/openapi.json").status_code in (401, 404)
        assert HttpWorkerClient(url, token=TOKEN).readouts(ReadoutRequest(dataset="dataset_1")).layer == 3


def test_graceful_shutdown_and_a_killed_worker(worker_config, worker_home: Path, service: AdlService) -> None:
    with worker_process(worker_config, worker_home, worker_home / "cache") as (url, process):
        client = HttpWorkerClient(url)
        outcomes: list[str] = []

        def ask() -> None:
            try:
                client.chat(ChatRequest(prompts=["hello"], max_new_tokens=64))
                outcomes.append("done")
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.6)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert outcomes == ["done"] * 4  # requests in flight at the signal were finished
        log = (worker_home / f"worker-{url.rsplit(':', 1)[1]}.log").read_text()
        assert "worker stopped" in log
        with pytest.raises(WorkerUnavailableError, match="cannot be reached"):
            client.readouts(ReadoutRequest(dataset="dataset_1"))


def test_queue_merges_greedy_chats_and_rejects_work_when_closing() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def run_chat(side: str, prompts: list[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        gate.wait(5)
        calls.append(prompts)
        return [f"{side}:{p}" for p in prompts]

    queue = ModelQueue(run_chat, max_pending=4)
    futures = [queue.submit(ChatJob("base", ["p0"], 8, 0.0, 0))]
    deadline = time.monotonic() + 10
    while len(queue) and time.monotonic() < deadline:  # the model thread takes the first job
        time.sleep(0.01)
    futures += [queue.submit(ChatJob("base", [f"p{i}"], 8, 0.0, 0)) for i in range(1, 5)]
    with pytest.raises(WorkerBusyError, match="queue is full"):
        queue.submit(ChatJob("base", ["extra"], 8, 0.0, 0))
    gate.set()
    assert [f.result(5) for f in futures] == [[f"base:p{i}"] for i in range(5)]
    assert calls == [["p0"], ["p1", "p2", "p3", "p4"]]  # the waiting greedy jobs were merged

    gate.clear()
    running = queue.submit(ChatJob("base", ["running"], 8, 0.0, 0))
    while len(queue) and time.monotonic() < deadline + 10:
        time.sleep(0.01)
    waiting = queue.submit(ChatJob("base", ["sampled"], 8, 1.0, 0))
    closer = threading.Thread(target=queue.close, kwargs={"drain_timeout": 0.3})
    closer.start()
    time.sleep(0.1)
    with pytest.raises(WorkerStoppingError):
        queue.submit(ChatJob("base", ["late"], 8, 0.0, 0))
    time.sleep(0.4)  # the drain time passes while the running job still runs
    gate.set()
    closer.join(5)
    assert running.result(5) == ["base:running"]
    with pytest.raises(WorkerStoppingError):
        waiting.result(5)


def test_a_layer_control_pair_sets_the_primary_layer_by_the_contrast_rule(
    worker_config, worker_home: Path, service: AdlService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pair as its own control: every layer's readout is fully shared with the control, so all
    # contrast scores are 0 and the tie goes to the layer nearest relative depth 0.5 of the tiny
    # model's 4 blocks (block 2), not to the configured primary layer 3.
    assert worker_config.adl.primary_layer == 3
    config = worker_config.model_copy(update={"layer_control": worker_config.pair})
    monkeypatch.setenv("ADL_HOME", str(worker_home / "cache"))
    controlled = AdlService.start(config, show_progress=False)
    try:
        dataset, artifact = next(iter(controlled.artifacts.items()))
        assert artifact.readouts.primary_layer == 2
        overview = controlled.readouts(ReadoutRequest(dataset=dataset))
        assert overview.layer == 2
    finally:
        controlled.close()
    assert next(iter(service.artifacts.values())).readouts.primary_layer == 3


def test_the_cached_steering_samples_of_every_prompt_are_served_whatever_the_prompt_limit(
        worker_config, service: AdlService) -> None:
    """The paper profile caches 20 final prompts and a worker takes 16 per request: asking for
    every cached prompt (the overview, both agents' first message, get_steered_samples without
    prompts) is a cheap read and must not be refused; naming more prompts than the limit is."""
    from tools.worker.schema import SteeredSamplesRequest

    limits = worker_config.limits.model_copy(update={"max_prompts": 1})
    strict = AdlService(worker_config.model_copy(update={"limits": limits}), service.pair,
                        service.artifacts, service.steering, service.steering_prompts)
    try:
        assert len(TINY_STEERING_PROMPTS) > limits.max_prompts
        dataset = next(iter(strict.artifacts))
        position = strict.steering[dataset][0].position
        overview = strict.overview()
        shown = {x.prompt for d in overview.datasets for s in d.steering for x in s.samples}
        assert shown == set(TINY_STEERING_PROMPTS)
        every = strict.steered_samples(SteeredSamplesRequest(dataset=dataset, position=position))
        assert [x.prompt for x in every.samples] == TINY_STEERING_PROMPTS
        Toolbox(strict, agent="blackbox").finetuned_samples()
        with pytest.raises(AdlError, match="Too many prompts: 2 given, at most 1"):
            strict.steered_samples(SteeredSamplesRequest(dataset=dataset, position=position,
                                                         prompts=TINY_STEERING_PROMPTS))
    finally:
        strict.close()


def test_a_zero_difference_is_said_to_mean_nothing(
    worker_config, worker_home: Path, service: AdlService, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The base model diffed with itself (as identical weights, an adapter that adds nothing):
    the difference is zero, so its readouts are a zero vector's tokens and its steered samples
    unsteered ones. Every tool and the first message say so, and the offline policy takes no
    evidence from them; a real finetune's difference is not marked."""
    from agent.loop import Budgets, investigate
    from agent.providers import make_provider
    from agent.transcript import ToolCallEvent, read_transcript
    from tools.models import ModelPairSpec
    from tools.worker.schema import SteeredSamplesRequest

    monkeypatch.setenv("ADL_HOME", str(worker_home / "cache"))
    same = worker_config.model_copy(update={"pair": ModelPairSpec(base=worker_config.pair.base)})
    null_service = AdlService.start(same, show_progress=False)
    try:
        dataset = next(iter(null_service.artifacts))
        readouts = null_service.readouts(ReadoutRequest(dataset=dataset, positions=[1, 2]))
        assert readouts.null_positions == [1, 2] and "is zero at position(s) [1, 2]" in (readouts.note or "")
        steered = null_service.steered_samples(SteeredSamplesRequest(dataset=dataset, position=1))
        assert steered.null_difference and "steering along it adds nothing" in (steered.note or "")
        # Not searched: strength 0, so the "steered" samples are drawn unsteered; live steering
        # there is refused (it would charge interactions for unsteered samples).
        assert {x.strength for x in steered.samples} == {0.0}
        live = Toolbox(null_service, "adl", interaction_budget=4).call(
            "generate_steered", {"position": 1, "prompts": ["hello"]})
        assert not live.ok and "ask_models" in (live.error or "") and live.interactions == 0
        first_look = Toolbox(null_service, "adl").overview()["datasets"][0]
        assert first_look["null_positions"] == [0, 1, 2] and first_look["difference_note"]
        assert all(s["null_difference"] for s in first_look["steering"])
        assert [n for n in null_service.info().notes if "zero at every computed block" in n]
        outcome = investigate(null_service, make_provider("heuristic"), "adl", Budgets(interactions=0),
                              tmp_path / "t.jsonl", ask=TINY_ASK)
        assert outcome.hypothesis is not None
        assert "logit lens" not in outcome.hypothesis and "steering" not in outcome.hypothesis
        results = [e.data for e in read_transcript(tmp_path / "t.jsonl") if isinstance(e, ToolCallEvent)]
        assert results and "null_positions" in json.dumps(results[0].result)
    finally:
        null_service.close()
    real = service.readouts(ReadoutRequest(dataset=next(iter(service.artifacts))))
    assert real.null_positions == [] and "zero" not in (real.note or "")
    assert "null_positions" not in Toolbox(service, "adl").overview()["datasets"][0]
