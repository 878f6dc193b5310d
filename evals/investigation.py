"""`adl investigate`: what did this finetune learn? ADL (computed or reused from the cache), the
agents, and a report folder (report.md, a self-contained report.html, report.json).

No ground truth is needed and none is claimed: nothing here is graded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel, Field

from agent.loop import Budgets, investigate
from agent.providers import make_provider
from tools.adl.differences import ActivationDifference, LayerSpec
from tools.adl.pipeline import AdlReadouts
from tools.adl.profiles import AnalysisProfile, profile_settings
from tools.adl.steering import PositionSteering, UnsteeredControl
from tools.cache import adl_home
from tools.model_spec import BackendName
from tools.models import LoadOptions, ModelPairSpec
from tools.toolbox import AGENT_KINDS, AgentKind, AskSettings, Hypothesis
from tools.worker.schema import WorkerConfig
from tools.worker.service import AdlService

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"
REPORT_TOKENS = 20
AgentChoice = Literal[AgentKind, "both"]
AGENT_CHOICES: tuple[AgentChoice, ...] = (*AGENT_KINDS, "both")


class StepTime(BaseModel):
    step: str
    seconds: float


class TokenList(BaseModel):
    position: int
    logit_lens: list[str]
    logit_lens_suppressed: list[str]
    patchscope: list[str]
    patchscope_scale: float
    zero_difference: bool = Field(False, description="The difference here is zero: these are a "
                                  "zero vector's tokens.")


class LayerTokens(BaseModel):
    layer: int
    primary: bool
    positions: list[TokenList]


class SteeringSamples(BaseModel):
    position: int
    layer: int
    strength: float
    prompt: str
    steered: list[str]
    unsteered: list[str]
    zero_difference: bool = Field(False, description="The difference here is zero: not searched, "
                                  "the steered samples are unsteered ones.")


class AgentResult(BaseModel):
    agent: AgentKind
    provider: str
    provider_is_llm: bool
    hypothesis: str | None
    board: list[Hypothesis]
    end_reason: str
    detail: str | None
    interactions_used: int
    llm_calls: int
    transcript: str


class InvestigationReport(BaseModel):
    """Everything `adl investigate` found, as written to report.json."""

    created: str
    base: str
    finetune: str
    finetune_kind: str
    backend: BackendName | None = Field(None, description="The model backend that ran the pair (the "
                                "bridge falls back to hf-hooks where it cannot run it faithfully).")
    profile: AnalysisProfile
    settings: dict[str, object]
    cache: dict[str, str] = Field(description="ADL and steering cache entries (under $ADL_HOME).")
    layers: list[LayerTokens]
    steering: list[SteeringSamples]
    steering_control: UnsteeredControl | None = Field(
        None, description="The strength search's unsteered control (shared by the positions).")
    agents: list[AgentResult]
    timings: list[StepTime]
    graded: bool = Field(False, description="Always false: there is no ground truth here.")
    notes: list[str]


def _token_lists(readouts: AdlReadouts, difference: ActivationDifference, k: int) -> list[LayerTokens]:
    def words(tokens: Sequence[object]) -> list[str]:
        return [t.token for t in tokens][:k]  # type: ignore[attr-defined]

    null = {layer: difference.null_positions(layer) for layer in difference.layers}

    return [
        LayerTokens(layer=layer.layer, primary=layer.layer == readouts.primary_layer, positions=[
            TokenList(position=p.position, logit_lens=words(p.logit_lens),
                      logit_lens_suppressed=words(p.logit_lens_suppressed),
                      patchscope=words(p.patchscope.get(str(p.patchscope_scale), [])),
                      patchscope_scale=p.patchscope_scale,
                      zero_difference=p.position in null[layer.layer])
            for p in layer.positions])
        for layer in readouts.layers
    ]


def _steering_rows(steering: list[PositionSteering],
                   difference: ActivationDifference) -> list[SteeringSamples]:
    null = {layer: difference.null_positions(layer) for layer in {e.layer for e in steering}}
    return [SteeringSamples(position=entry.position, layer=entry.layer, strength=entry.strength,
                            prompt=sample.prompt, steered=sample.steered, unsteered=sample.unsteered,
                            zero_difference=entry.position in null[entry.layer])
            for entry in steering for sample in entry.samples]


def run_investigation(
    pair: ModelPairSpec,
    out: Path,
    *,
    agents: AgentChoice = "both",
    provider: str = "heuristic",
    budget: int = 5,
    profile: AnalysisProfile = "quick",
    layers: tuple[LayerSpec, ...] | None = None,
    load: LoadOptions | None = None,
    ask: AskSettings | None = None,
    show_progress: bool = True,
) -> InvestigationReport:
    """Compute or reuse the pair's ADL, run the agents, and write the report folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    analysis = profile_settings(profile)
    adl = analysis.adl
    if layers is not None:
        adl = adl.model_copy(update={"layers": layers, "primary_layer": layers[-1]})
    config = WorkerConfig(label="investigate", pair=pair, load=load or LoadOptions(), adl=adl,
                          steering=analysis.steering, steering_positions=analysis.steering_positions)
    timings: list[StepTime] = []
    chosen = make_provider(provider)
    started = time.perf_counter()
    service = AdlService.start(config, show_progress=show_progress)
    try:
        timings.append(StepTime(step="load the pair, ADL pass and steering (cached ones reused)",
                                seconds=round(time.perf_counter() - started, 1)))
        dataset, artifact = next(iter(service.artifacts.items()))
        resolved_kind = "adapter" if service.pair.shares_base_weights else "full"
        backend = service.pair.backend_name
        load_notes = service.notes()
        steering = service.steering[dataset]
        results: list[AgentResult] = []
        kinds: list[AgentKind] = list(AGENT_KINDS) if agents == "both" else [agents]
        for kind in kinds:
            started = time.perf_counter()
            transcript = out / "transcripts" / f"{kind}.jsonl"
            transcript.parent.mkdir(exist_ok=True)
            outcome = investigate(service, chosen, kind, Budgets(interactions=budget), transcript,
                                  {"pair": pair.model_dump(mode="json")}, ask=ask)
            results.append(AgentResult(
                agent=kind, provider=chosen.name, provider_is_llm=chosen.is_llm,
                hypothesis=outcome.hypothesis, board=outcome.board, end_reason=outcome.end_reason,
                detail=outcome.detail, interactions_used=outcome.interactions_used,
                llm_calls=outcome.llm_calls, transcript=str(transcript)))
            timings.append(StepTime(step=f"{kind} agent", seconds=round(time.perf_counter() - started, 1)))
    finally:
        service.close()
    notes = ["No ground truth: nothing is graded."]
    notes += load_notes  # tokenizer, declared base, backend fallback, a zero difference
    if not chosen.is_llm:
        notes.append("No LLM was used: the agents ran the offline heuristic policy (--provider "
                     "heuristic), which reads tools by fixed rules.")
    report = InvestigationReport(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        base=pair.base, finetune=pair.finetuned or pair.base, finetune_kind=resolved_kind,
        backend=backend, profile=profile,
        settings={"adl": adl.model_dump(mode="json"), "steering": analysis.steering.model_dump(mode="json"),
                  "steering_positions": analysis.steering_positions, "budget": budget,
                  "ask_models": (ask or AskSettings()).model_dump()},
        cache={"home": str(adl_home()), "adl": artifact.path.name,
               "steering": steering[0].cache_key if steering and steering[0].cache_key else "none"},
        layers=_token_lists(artifact.readouts, artifact.difference, REPORT_TOKENS),
        steering=_steering_rows(steering, artifact.difference),
        steering_control=steering[0].control if steering else None,
        agents=results, timings=timings, notes=notes,
    )
    write_report(report, out)
    return report


def write_report(report: InvestigationReport, out: Path) -> dict[str, Path]:
    """report.json, report.md and a self-contained report.html (model text escaped)."""
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    paths["html"].write_text(env.get_template("investigation_report.html").render(
        r=report, control=control_summary(report.steering_control)), encoding="utf-8")
    paths["json"].write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return paths


MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]!|<>#])")


def _cell(text: str) -> str:
    """Model text in markdown: one line, with markdown syntax (links, images, inline
    code, tables, HTML) backslash-escaped so that it shows as text."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(text.split()))


def control_summary(control: UnsteeredControl | None) -> str:
    """The steering search's unsteered control in one sentence (`UnsteeredControl.describe`)."""
    if control is None:
        return "Unsteered control: not recorded (steering computed before the control existed)."
    return control.describe()


ZERO_MARK = " (zero difference)"  # a readout row or steering row that says nothing


def render_markdown(report: InvestigationReport) -> str:
    """The report as markdown (model text escaped)."""
    lines = [f"# What did `{report.finetune}` learn?", "",
             f"- base: `{report.base}`; finetune: `{report.finetune}` ({report.finetune_kind})",
             (f"- profile: {report.profile}; backend: {report.backend or 'not recorded'}; created "
              f"{report.created}"),
             (f"- cache ($ADL_HOME {report.cache['home']}): ADL `{report.cache['adl']}`, steering "
             f"`{report.cache['steering']}`"), *[f"- {_cell(note)}" for note in report.notes], ""]
    for agent in report.agents:
        lines += [f"## {agent.agent} agent ({agent.provider})", "",
                  f"**Hypothesis:** {_cell(agent.hypothesis or '(none)')}", "",
                  (f"end: {agent.end_reason}; model interactions {agent.interactions_used}; "
                  f"transcript `{agent.transcript}`"), ""]
        if agent.board:
            lines += ["| # | status | hypothesis | notes |", "|---|---|---|---|"]
            lines += [f"| {h.id} | {h.status} | {_cell(h.description)} | {_cell('; '.join(h.notes))} |"
                      for h in agent.board]
            lines.append("")
    lines += ["## Activation-difference readouts", ""]
    for layer in report.layers:
        lines += [f"### Block {layer.layer}{' (primary)' if layer.primary else ''}", "",
                  "| position | logit lens | hub-suppressed | Patchscope (scale) |", "|---|---|---|---|"]
        for p in layer.positions:
            lines.append(f"| {p.position}{ZERO_MARK if p.zero_difference else ''} | "
                         f"{_cell(', '.join(p.logit_lens))} | "
                         f"{_cell(', '.join(p.logit_lens_suppressed))} | ({p.patchscope_scale:g}) "
                         f"{_cell(', '.join(p.patchscope))} |")
        lines.append("")
    lines += ["## Steered vs unsteered samples", "", control_summary(report.steering_control), "",
              "| position | strength | prompt | steered | unsteered |", "|---|---|---|---|---|"]
    lines += [f"| {s.position}{ZERO_MARK if s.zero_difference else ''} | {s.strength:.3f} | {_cell(s.prompt)} | {_cell(s.steered[0] if s.steered else '')} | "
              f"{_cell(s.unsteered[0] if s.unsteered else '')} |" for s in report.steering]
    lines += ["", "## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {t.step} | {t.seconds:.1f} |" for t in report.timings]
    lines += ["", "Settings:", "", "```json", json.dumps(report.settings, indent=2), "```", ""]
    return "\n".join(lines)
