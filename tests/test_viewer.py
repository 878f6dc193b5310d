"""`adl view`: the read-only results viewer, driven through real headless Chromium (Debian's
`chromium` package, via Playwright), plus plain HTTP checks of its read-only and security rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.providers.base import ToolCall, Usage
from agent.transcript import LlmCallData, MessageData, ToolCallData, TranscriptWriter, WorkerFacts
from evals import viewer
from evals.store import Grade, Store, open_store
from evals.viewer import CONTENT_SECURITY_POLICY, HEURISTIC_LABEL, create_viewer_app, serve_viewer
from tests.browser import chromium_executable
from tests.transcript_fixtures import run_ended, run_started
from tests.worker_fixtures import serve_in_thread
from tools.errors import AdlError

EXPERIMENT = "cake-vs-baseline"
ORGANISM = "cake_baker"
PROVIDER = "heuristic:offline-baseline-v2"
EMPTY = "empty sweep/v2"  # no runs; a space and a slash in the name
HOSTILE = "<script>window.__pwned = 1</script><b>bold?</b>"
TOOL_CALLS_PER_RUN = 3

@dataclass
class Viewer:
    url: str
    store: Store
    run_ids: list[int]


def _write_transcript(path: Path, agent: str, budget: int, repeat: int) -> None:
    with TranscriptWriter(path) as t:
        t.write(run_started(agent, PROVIDER, provider_is_llm=False, repeat=repeat,
                            worker=WorkerFacts(backend="bridge", tokenizer="base", notes=[HOSTILE])))
        t.write(MessageData(role="system", content="You investigate a finetuned model."))
        t.write(MessageData(role="user", content=f"Budget: {budget} model interactions."))
        t.write(LlmCallData(model="offline-baseline-v2", provider=PROVIDER,
                            usage=Usage(input_tokens=100 + budget, output_tokens=20), cost_usd=None,
                            latency_s=0.01, attempts=1))
        t.write(MessageData(role="assistant", content=HOSTILE, tool_calls=[
            ToolCall(id="c1", name="get_token_readouts", arguments='{"k": 40}'),
            ToolCall(id="c2", name="ask_models", arguments="{}")]))
        t.write(ToolCallData(id="c1", name="get_token_readouts", arguments='{"k": 40}', ok=True,
                             result={"tokens": ["cake", "oven", "<i>flour</i>"]}, error=None,
                             interactions=1, latency_s=0.2, interactions_left=budget - 1))
        t.write(ToolCallData(id="c2", name="ask_models", arguments="{}", ok=False, result=None,
                             error="ToolInputError: prompts: field required", interactions=0,
                             latency_s=0.0, interactions_left=budget - 1))
        t.write(MessageData(role="assistant", content="Submitting.", tool_calls=[
            ToolCall(id="c3", name="submit_hypothesis", arguments='{"description": "bakes cakes"}')]))
        t.write(ToolCallData(id="c3", name="submit_hypothesis",
                             arguments='{"description": "The model talks about baking cakes."}',
                             ok=True, result="Hypothesis submitted.", error=None, interactions=0,
                             latency_s=0.0, interactions_left=budget - 1))
        t.write(run_ended("submitted", "The model bakes <em>cakes</em>."))


def _fill_store(folder: Path) -> tuple[Store, list[int]]:
    store = open_store(f"sqlite:///{folder / 'adl.db'}")
    experiment = store.experiment(EXPERIMENT, {"organisms": [ORGANISM]})
    run_ids = []
    scores = {"adl": [4.0, 5.0], "blackbox": [2.0, 3.0]}
    for agent in ("adl", "blackbox"):
        for budget in (2, 5):
            for repeat in (0, 1):
                run = store.start_unit(experiment.id, f"{ORGANISM}/{agent}/{budget}/{repeat}",
                                       organism=ORGANISM, agent=agent, budget=budget,
                                       repeat=repeat, provider=PROVIDER, provider_is_llm=False)
                assert run is not None
                transcript = folder / f"run-{run.id}.jsonl"
                _write_transcript(transcript, agent, budget, repeat)
                store.set_transcript(run.id, transcript)
                outcome = {"end_reason": "submitted",
                           "hypothesis": "The model bakes <em>cakes</em>.", "llm_calls": 2,
                           "interactions_used": 1, "input_tokens": 100 + budget,
                           "output_tokens": 20, "cost_usd": None, "wall_time_s": 1.5}
                grade = Grade(grader="rubric-judge", score=scores[agent][repeat],
                              reasoning=f"Mentions baking ({agent}, repeat {repeat}).")
                store.finish_unit(run.id, outcome, grade)
                run_ids.append(run.id)
    unfinished = store.start_unit(experiment.id, f"{ORGANISM}/adl/9/0", organism=ORGANISM,
                                  agent="adl", budget=9, repeat=0, provider=PROVIDER,
                                  provider_is_llm=False)
    assert unfinished is not None
    store.experiment(EMPTY)
    return store, run_ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    store, run_ids = _fill_store(tmp_path_factory.mktemp("viewer"))
    with serve_in_thread(create_viewer_app(store), "the viewer") as url:
        yield Viewer(url=url, store=store, run_ids=run_ids)


def test_browser_walkthrough(served: Viewer) -> None:
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed in the virtual environment: run `make setup`.")

    page_errors: list[str] = []  # script errors, and console errors (CSP violations, failed loads)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("console", lambda msg: msg.type == "error" and page_errors.append(msg.text))
            page.goto(served.url + "/")
            row = page.locator("#experiments tbody tr", has_text=EXPERIMENT)
            assert "8 / 9" in row.inner_text()

            page.click(f"a.experiment-link:text('{EXPERIMENT}')")
            page.wait_for_url(f"**/experiments/{EXPERIMENT}")
            cells = page.locator("#comparison tbody tr")
            assert cells.count() == 8  # (cake_baker + all organisms) x 2 agents x 2 budgets
            first = cells.nth(0).inner_text()
            assert ORGANISM in first and "adl" in first
            assert "4.50" in first  # adl, budget 2: grades 4 and 5
            assert "100%" in first and "unknown" in first
            assert page.locator("#differences tbody tr").count() == 4
            assert "2.00" in page.locator("#differences tbody tr").nth(0).inner_text()

            plot = page.locator("img#plot")
            plot.wait_for()
            page.wait_for_function("document.querySelector('img#plot').complete")
            assert plot.evaluate("img => img.naturalWidth") > 0

            assert page.locator("#runs tbody tr").count() == 9
            run_id = served.run_ids[0]
            page.click(f"a.run-link[href='/runs/{run_id}']")
            page.wait_for_url(f"**/runs/{run_id}")
            header = page.locator("#run-header").inner_text()
            assert ORGANISM in header and PROVIDER in header and HEURISTIC_LABEL in header

            calls = page.locator("details.tool-call")
            assert calls.count() == len(served.store.tool_calls(run_id)) == TOOL_CALLS_PER_RUN
            first_call = calls.nth(0)
            assert "get_token_readouts" in first_call.locator("summary").inner_text()
            arguments = first_call.locator("pre.arguments")
            assert not arguments.is_visible()
            first_call.locator("summary").click()
            assert arguments.is_visible()
            assert json.loads(arguments.inner_text()) == {"k": 40}
            assert "<i>flour</i>" in first_call.locator("pre.result").inner_text()
            failed = calls.nth(1)
            assert "error" in failed.locator("summary").inner_text()
            failed.locator("summary").click()
            assert "field required" in failed.locator("pre.error").inner_text()

            # The hostile message is text on the page, not markup.
            assert page.get_by_text(HOSTILE).first.is_visible()
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("script").count() == 0
            assert page.locator("b").count() == 0
            assert page.locator("i").count() == 0
            assert page.locator("em").count() == 0
        finally:
            browser.close()
    assert page_errors == []


def test_only_get_is_answered(served: Viewer) -> None:
    run_id = served.run_ids[0]
    with httpx.Client(base_url=served.url) as client:
        for method, path in [("POST", "/"), ("POST", f"/runs/{run_id}"), ("PUT", f"/runs/{run_id}"),
                             ("DELETE", f"/runs/{run_id}.json"), ("PATCH", "/experiments/x"),
                             ("POST", "/no/such/page")]:
            response = client.request(method, path)
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == "GET"
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_unknown_pages_are_404_with_the_csp(served: Viewer) -> None:
    with httpx.Client(base_url=served.url) as client:
        for path in ["/runs/999999", "/runs/999999.json", "/runs/abc", "/experiments/nope",
                     "/experiments/nope/plot.png", "/nothing-here"]:
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "No experiment named &#39;nope&#39;" in client.get("/experiments/nope").text


def test_pages_carry_the_csp_and_escape_model_output(served: Viewer) -> None:
    run_id = served.run_ids[0]
    with httpx.Client(base_url=served.url) as client:
        for path in ["/", f"/experiments/{EXPERIMENT}", f"/runs/{run_id}"]:
            response = client.get(path)
            assert response.status_code == 200
            assert response.headers["content-security-policy"] == (
                "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
                "script-src 'none'")
            assert "<script" not in response.text
        page = client.get(f"/runs/{run_id}").text
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;b&gt;bold?&lt;/b&gt;" in page
        assert "backend bridge, tokenizer base" in page  # the worker's facts, its notes escaped
        plot = client.get(f"/experiments/{EXPERIMENT}/plot.png")
        assert plot.headers["content-type"] == "image/png"
        assert plot.content.startswith(b"\x89PNG")


def test_an_experiment_without_runs(served: Viewer) -> None:
    with httpx.Client(base_url=served.url) as client:
        index = client.get("/").text
        assert '<a class="experiment-link" href="/experiments/empty%20sweep%2Fv2">' in index
        page = client.get("/experiments/empty%20sweep%2Fv2")
        assert page.status_code == 200
        assert "No finished, graded runs yet." in page.text and "No runs yet." in page.text
        assert 'id="plot"' not in page.text
        assert client.get("/experiments/empty%20sweep%2Fv2/plot.png").status_code == 404


def test_run_json(served: Viewer) -> None:
    run_id = served.run_ids[-1]
    with httpx.Client(base_url=served.url) as client:
        response = client.get(f"/runs/{run_id}.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert set(data) == {"run", "messages", "tool_calls", "usage", "grades"}
    assert data["run"]["id"] == run_id and data["run"]["agent"] == "blackbox"
    assert data["run"]["status"] == "finished" and data["run"]["cost_usd"] is None
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant", "assistant"]
    assert data["messages"][2]["content"] == HOSTILE  # raw in JSON; escaping is the page's job
    assert [c["name"] for c in data["tool_calls"]] == ["get_token_readouts", "ask_models",
                                                       "submit_hypothesis"]
    assert data["tool_calls"][1]["ok"] is False
    assert data["usage"][0]["input_tokens"] == 105
    assert data["grades"][0]["score"] == 3.0 and data["grades"][0]["grader"] == "rubric-judge"


def test_a_foreign_host_header_is_refused(served: Viewer) -> None:
    """DNS rebinding (issue 15.3): a page whose name resolves to 127.0.0.1 must not read runs."""
    run_id = served.run_ids[-1]
    port = served.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=served.url) as client:
        for path in ["/", f"/runs/{run_id}.json", f"/experiments/{EXPERIMENT}"]:
            rebound = client.get(path, headers={"Host": f"attacker.example:{port}"})
            assert rebound.status_code == 400 and "cakes" not in rebound.text, path
        assert client.get(f"/runs/{run_id}.json", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_serve_refuses_a_non_loopback_host_unless_allowed(monkeypatch, tmp_path) -> None:
    served_on: list[tuple[str, int]] = []
    monkeypatch.setattr(viewer.uvicorn, "run",
                        lambda app, host, port, **kw: served_on.append((host, port)))
    store = open_store(f"sqlite:///{tmp_path / 'adl.db'}")
    for host in ["0.0.0.0", "::", "192.168.1.10", "example.org"]:
        with pytest.raises(AdlError, match="allow_remote"):
            serve_viewer(store, host=host)
    assert served_on == []
    for host in ["127.0.0.1", "localhost", "::1"]:
        serve_viewer(store, host=host, port=9000)
    serve_viewer(store, host="0.0.0.0", allow_remote=True)
    assert served_on == [("127.0.0.1", 9000), ("localhost", 9000), ("::1", 9000),
                         ("0.0.0.0", viewer.DEFAULT_PORT)]
