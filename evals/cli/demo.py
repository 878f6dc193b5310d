"""`adl demo`: the main job, offline, from nothing.

Builds (or reuses) two offline organisms, computes their ADL (quick profile), runs the ADL agent
and the blackbox baseline with the offline heuristic policy (not an LLM) at two interaction
budgets, grades the hypotheses with the offline grader, stores everything, prints the
comparison and writes the plot. Needs the worker extra (it builds organisms in this process).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from evals.cli.agent import results_dir
from evals.cli.experiments import compare_and_report
from evals.cli.options import ORGANISM_DIRS_OPTION, use_organism_dirs
from evals.organisms import get_organism
from evals.organisms.schema import ORGANISM_SIZES
from evals.runs import EvalConfig, run_experiment
from evals.store import open_store
from tools.toolbox import AGENT_KINDS, AskSettings

console = Console(soft_wrap=True, emoji=False)
DEMO_ORGANISMS = ("cake_bake", "taboo_gold")
DEMO_BUDGETS = (0, 5)
# ask_models answers are cut at 64 new tokens so the demo fits 2 CPU cores (the reference's
# default, and EvalConfig's, is 1024): generation here is bound by memory bandwidth, about
# 0.15 s per new token whatever the batch, so the cut halves the cost of every question. The
# temperature is the reference's 0.8. Both agents alike.
DEMO_ASK = AskSettings(max_new_tokens=64)


def demo(
    organisms: list[str] = typer.Option(list(DEMO_ORGANISMS), "--organism", help="Organisms to evaluate."),
    database: str | None = typer.Option(None, help="SQLAlchemy URL; default $ADL_RESULTS/adl.db."),
    size: str = typer.Option("small", help="Organism build size: small (the default: 40% of the "
                             "examples, same recipe, so the demo fits 2 CPU cores) or full."),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Build organisms, run the ADL agent and the blackbox baseline, grade, compare, plot."""
    from evals.organisms.build import at_size, build_organism, read_manifest
    from tools.machine import machine_line

    use_organism_dirs(organism_dirs)
    if size not in ORGANISM_SIZES:
        raise typer.BadParameter(f"choose one of {', '.join(ORGANISM_SIZES)}", param_hint="--size")
    started = time.perf_counter()
    console.print(f"machine: {machine_line()}")
    for name in organisms:
        organism = at_size(get_organism(name), size)  # type: ignore[arg-type]
        console.rule(f"[bold]{escape(organism.name)}[/] ({organism.type_label}, {size} build): "
                     f"{escape(organism.description or '(no ground truth)')}")
        manifest = read_manifest(build_organism(organism))
        console.print(
            f"held-out loss on its training distribution: base {manifest.base_heldout_loss:.2f}"
            f" -> finetuned {manifest.finetuned_heldout_loss:.2f}; leak rate on "
            f"{len(manifest.leak.prompts)} generic prompts: base {manifest.leak.base_rate:.0%}, "
            f"finetuned {manifest.leak.finetuned_rate:.0%}")
    built = time.perf_counter()
    name = "demo-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    config = EvalConfig(name=name, organisms=organisms, agents=list(AGENT_KINDS),
                        budgets=list(DEMO_BUDGETS), repeats=1, providers=["heuristic"],
                        grader="offline", profile="quick", organism_size=size, concurrency=1,  # type: ignore[arg-type]
                        ask_models=DEMO_ASK)
    console.rule(f"[bold]experiment {name}[/]: ADL agent vs blackbox baseline, budgets "
                 f"{list(DEMO_BUDGETS)}; both agents are the offline heuristic policy (not an LLM)")
    store = open_store(database)
    summary = run_experiment(config, results_dir(), store)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} runs failed[/]: " + escape("; ".join(summary.failed)))
    comparison = compare_and_report(store, name)
    adl = [c for c in comparison.cells if c.organism == "all" and c.agent == "adl"]
    blackbox = [c for c in comparison.cells if c.organism == "all" and c.agent == "blackbox"]
    for a, b in zip(adl, blackbox, strict=True):
        verdict = "exceeds" if a.mean_grade > b.mean_grade else "does not exceed"
        console.print(f"budget {a.budget}: the ADL agent's mean grade {a.mean_grade:.2f} {verdict} "
                      f"the baseline's {b.mean_grade:.2f} (n={a.n} organisms)")
    console.print(f"browse the transcripts: adl view   (results in {results_dir()})")
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s (organisms "
                  f"{built - started:.0f} s, ADL + agent runs + grading {time.perf_counter() - built:.0f} s)")
