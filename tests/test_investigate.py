"""`adl investigate` on an adapter made with peft directly (not by the organism builder): the
report folder, and the HTML report in a headless browser with hostile model text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evals.cli import app
from evals.investigation import InvestigationReport, control_summary, write_report
from tests.browser import chromium_executable
from tools.adl.steering import UnsteeredControl

HOSTILE = "<script>window.__pwned = 1</script><b>bold?</b>"


@pytest.fixture(scope="module")
def peft_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter saved by peft itself (not by the organism builder)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "up_proj"],
                      init_lora_weights=False)
    out = tmp_path_factory.mktemp("peft") / "my-adapter"
    get_peft_model(model, lora).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One $ADL_HOME for the module: `adl investigate` and `adl eval run` share the pair's ADL."""
    return tmp_path_factory.mktemp("adl-home")


@pytest.fixture(scope="module")
def investigated(tiny_model_dir: Path, peft_adapter: Path, shared_home: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report folder of `adl investigate` on that adapter (layers given as the quick
    profile's, so that `adl eval run` below reuses the cached ADL)."""
    folder = tmp_path_factory.mktemp("investigate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADL_HOME", str(shared_home))
        result = CliRunner().invoke(app, [
            "investigate", "--base", str(tiny_model_dir), "--finetune", str(peft_adapter),
            "--provider", "heuristic", "--budget", "0", "--profile", "quick", "--layers", "0.5,0.75,1.0",
            "--out", str(folder / "report"),
        ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "No LLM was used" in result.output and "report.html" in result.output
    return folder / "report"


def test_investigate_writes_the_three_report_files(investigated: Path) -> None:
    report = InvestigationReport.model_validate_json((investigated / "report.json").read_text())
    assert not report.graded and "No ground truth: nothing is graded." in report.notes
    assert [a.agent for a in report.agents] == ["adl", "blackbox"]
    assert all(a.hypothesis and a.interactions_used == 0 for a in report.agents)
    assert all(Path(a.transcript).is_file() for a in report.agents)
    assert [layer.layer for layer in report.layers] == [1, 2, 3] and report.layers[-1].primary
    assert all(p.logit_lens and p.logit_lens_suppressed for layer in report.layers for p in layer.positions)
    assert report.steering and report.cache["adl"] and report.cache["steering"] != "none"
    assert report.backend == "bridge"  # the tiny Llama adapter: no fallback
    control = report.steering_control
    assert control is not None and control.pass_rates
    summary = f"search and samples ran at temperature {control.temperature:g}" if control.calibrated \
        else "could not tell steering from sampling noise"
    assert {t.step.split()[0] for t in report.timings} >= {"load", "adl", "blackbox"}
    markdown = (investigated / "report.md").read_text()
    assert "## Activation-difference readouts" in markdown and "No LLM was used" in markdown
    assert "backend: bridge" in markdown and "backend bridge" in (investigated / "report.html").read_text()
    assert "Unsteered control: the model's own unsteered samples pass" in markdown
    assert summary in markdown
    # "nothing is graded" is the one grade word besides the control's "coherence grader".
    assert markdown.lower().replace("coherence grader", "").count("grade") == 1
    assert report.finetune_kind == "adapter"
    html = (investigated / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert summary in html.replace("&#39;", "'")


def test_the_html_report_shows_readouts_and_model_text_as_text(investigated: Path, tmp_path: Path) -> None:
    report = InvestigationReport.model_validate_json((investigated / "report.json").read_text())
    report.agents[0].hypothesis = HOSTILE
    report.steering[0].steered = [HOSTILE]
    write_report(report, tmp_path)
    token = report.layers[-1].positions[1].logit_lens_suppressed[0]
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto((tmp_path / "report.html").as_uri())
            assert page.locator("#hypothesis-adl").inner_text() == HOSTILE
            readouts = page.locator("table.readouts").last.inner_text()
            assert token.strip() in readouts
            assert page.evaluate("window.__pwned === undefined")
            assert page.locator("b", has_text="bold?").count() == 0
        finally:
            browser.close()
    assert json.loads((tmp_path / "report.json").read_text())["agents"][0]["hypothesis"] == HOSTILE


def test_the_adapter_as_an_organism_file_runs_through_eval_run(
    tiny_model_dir: Path, peft_adapter: Path, investigated: Path, shared_home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADL_HOME", str(shared_home))
    monkeypatch.setenv("ADL_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("ADL_ORGANISMS", "")  # restored after the test: --organisms appends to it
    organisms = tmp_path / "organisms"
    runner = CliRunner()
    made = runner.invoke(app, ["organisms", "new", "my_adapter", "--base", str(tiny_model_dir),
                               "--finetune", str(peft_adapter), "--dir", str(organisms)])
    assert made.exit_code == 0, made.output
    graded = yaml.safe_load((organisms / "my_adapter.yaml").read_text())
    graded.update(name="my_graded_adapter", type="SDF", description="Talks about rain and rivers.",
                  key_facts=["Rain falls on the river."])
    (organisms / "my_graded_adapter.yaml").write_text(yaml.safe_dump(graded))
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({
        "name": "own-adapters", "organisms": ["my_adapter", "my_graded_adapter"], "agents": ["adl"],
        "budgets": [0], "providers": ["heuristic"], "grader": "offline", "profile": "quick",
        "ask_models": {"max_new_tokens": 8}}))
    result = runner.invoke(app, ["eval", "run", str(config), "--organisms", str(organisms)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    compared = runner.invoke(app, ["eval", "compare", "own-adapters", "--organisms", str(organisms)])
    assert compared.exit_code == 0, compared.output + repr(compared.exception)
    assert "1 finished runs are ungraded" in " ".join(compared.output.split())
    rows = (tmp_path / "results" / "comparisons" / "own-adapters" / "comparison.csv").read_text()
    assert ",my_graded_adapter,adl,0,1," in rows and ",my_adapter," not in rows


def test_the_control_summary_warns_when_no_temperature_passed() -> None:
    failed = UnsteeredControl(temperature=1.0, pass_rates={"1.2": 0.1, "1": 0.5}, calibrated=False)
    assert "could not tell steering from sampling noise" in control_summary(failed)
    assert "10% at 1.2, 50% at 1" in control_summary(failed)
    passed = UnsteeredControl(temperature=1.0, pass_rates={"1.2": 0.1, "1": 1.0}, calibrated=True)
    assert "ran at temperature 1" in control_summary(passed) and "noise" not in control_summary(passed)
    assert "not recorded" in control_summary(None)


def test_a_finetune_with_the_base_s_own_weights_reads_as_no_difference(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full "finetune" that is the base's weights: the report says the difference is zero,
    marks every readout and steering row, and the ADL agent finds no domain in them."""
    import shutil

    same = shutil.copytree(tiny_model_dir, tmp_path / "same-weights")
    monkeypatch.setenv("ADL_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, [
        "investigate", "--base", str(tiny_model_dir), "--finetune", str(same), "--kind", "full",
        "--provider", "heuristic", "--budget", "0", "--agent", "adl", "--profile", "quick",
        "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = InvestigationReport.model_validate_json((tmp_path / "report" / "report.json").read_text())
    assert any("zero at every computed block and position" in note for note in report.notes)
    assert all(p.zero_difference for layer in report.layers for p in layer.positions)
    assert report.steering and all(s.zero_difference and s.strength == 0 for s in report.steering)
    assert "(zero difference)" in (tmp_path / "report" / "report.md").read_text()
    assert "(zero difference)" in (tmp_path / "report" / "report.html").read_text()
    assert report.agents[0].hypothesis and "logit lens" not in report.agents[0].hypothesis
