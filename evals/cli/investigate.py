"""`adl investigate`: one's own finetune, no organism file and no ground truth needed (the
worker extra: the pair is loaded in this process)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from evals.cli.agent import results_dir
from evals.cli.diff import parse_layers
from evals.workers import PROFILES
from tools.errors import AdlInputError
from tools.model_spec import FinetuneKind, ModelPairSpec, parse_load_options
from tools.secrets import install_log_redaction
from tools.toolbox import AskSettings

console = Console(soft_wrap=True, emoji=False)
KINDS = {"auto": FinetuneKind.AUTO, "adapter": FinetuneKind.ADAPTER, "full": FinetuneKind.CHECKPOINT,
         "checkpoint": FinetuneKind.CHECKPOINT}


def investigate_command(
    base: str | None = typer.Option(None, help="Base model: hub id, local folder or offline short "
                                    "name (`adl models list`). Default: the base an adapter "
                                    "records (adapter_config.json); a full model needs it."),
    finetune: str = typer.Option(..., help="Finetune: hub id or local folder; a peft adapter made "
                                 "by any tool, or a full finetuned model."),
    kind: str = typer.Option("auto", help="auto, adapter or full (auto: a folder with "
                             "adapter_config.json is an adapter)."),
    agent: str = typer.Option("both", help="adl, blackbox or both."),
    provider: str = typer.Option("heuristic", help="openai:MODEL, anthropic:MODEL, "
                                 "openai-compatible:URL:MODEL, or heuristic (offline, not an LLM)."),
    budget: int = typer.Option(5, min=0, help="Model interactions per agent (the paper: 0, 5, 50)."),
    profile: str = typer.Option("quick", help=f"ADL settings: {', '.join(PROFILES)} (paper: the "
                                "reference toolkit's protocol, sized for a GPU)."),
    layers: str | None = typer.Option(None, help="Relative depths (0.5) or block indices (15), "
                                      "comma-separated; the last is the primary layer. Default: "
                                      "the profile's."),
    out: Path | None = typer.Option(None, help="Report folder (default: "
                                    "$ADL_RESULTS/investigations/STAMP-NAME)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", help="auto (float32 on a CPU, bfloat16 on a GPU), "
                              "float32, bfloat16 or float16."),
    ask_max_new_tokens: int = typer.Option(1024, min=1, max=1024, help="New tokens per ask_models "
                                           "answer; the reference's default."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the models' own code from their repositories "
        "(architectures transformers does not ship). Only for repositories you trust."),
) -> None:
    """What did this finetune learn? ADL readouts, steering and the agents' hypotheses, written
    as report.md, report.html and report.json. Nothing is graded: there is no ground truth."""
    from evals.investigation import AGENT_CHOICES, run_investigation

    install_log_redaction()
    if kind not in KINDS:
        raise AdlInputError(f"Unknown --kind {kind!r}; choose auto, adapter or full.")
    if agent not in AGENT_CHOICES:
        raise AdlInputError(f"Unknown --agent {agent!r}; choose adl, blackbox or both.")
    if profile not in PROFILES:
        raise AdlInputError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    if base is None:
        from tools.models import recorded_base

        base = recorded_base(finetune)
        console.print(f"base: {escape(base)} (recorded by the adapter)")
    pair = ModelPairSpec(base=base, finetuned=finetune, finetune_kind=KINDS[kind])
    if out is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(finetune.rstrip("/")).name)[:60] or "finetune"
        out = results_dir() / "investigations" / f"{stamp}-{name}"
    report = run_investigation(
        pair, out, agents=agent, provider=provider, budget=budget, profile=profile,  # type: ignore[arg-type]
        layers=parse_layers(layers) if layers else None,
        load=parse_load_options(device, dtype, trust_remote_code=trust_remote_code),
        ask=AskSettings(max_new_tokens=ask_max_new_tokens),
    )
    for note in report.notes:
        console.print(f"[yellow]{escape(note)}[/]")
    for result in report.agents:  # model and provider text as text, never as Rich markup
        console.print(f"[bold]{result.agent} agent[/] ({escape(result.provider)}): "
                      f"{escape(result.hypothesis or '')}")
    console.print(f"report: {out / 'report.html'} (also report.md, report.json)", markup=False)
