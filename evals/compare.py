"""Agent vs baseline: per organism, agent and budget the mean grade with a 95% bootstrap
interval, the paired ADL-minus-blackbox difference, success rate, tokens and cost; a plot in
the style of the paper's agent figure, and CSV. Control organisms (no narrow domain) get their
own rows but are left out of the pooled "all" rows."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from evals.organisms import get_organism
from evals.store import Run, Store
from tools.errors import AdlError
from tools.toolbox import AGENT_KINDS

SUCCESS_GRADE = 4.0
BOOTSTRAP_SAMPLES = 2000
ALL_ORGANISMS = "all"


def _run_is_control(run: Run, unresolved: set[str]) -> bool:
    """Control organisms (no narrow domain) are reported but never pooled into "all". The run
    records it when it starts; a run written before that (NULL) is looked up in the registry,
    and an organism not found there is added to `unresolved` (and pooled)."""
    if run.organism_is_control is not None:
        return run.organism_is_control
    try:
        return get_organism(run.organism).is_control
    except AdlError:
        unresolved.add(run.organism)
        return False


class CellSummary(BaseModel):
    """One (organism, agent, budget) cell; organism "all" pools every organism but controls."""

    organism: str
    agent: str
    budget: int
    n: int
    mean_grade: float
    ci_low: float
    ci_high: float
    success_rate: float
    mean_tokens: float
    cost_usd: float | None  # None when any run's price is unknown
    provider: str
    provider_is_llm: bool


class PairedDifference(BaseModel):
    """ADL minus blackbox grade over runs paired by organism, budget, repeat and provider."""

    organism: str
    budget: int
    provider: str
    n_pairs: int
    mean_difference: float
    ci_low: float
    ci_high: float


class Comparison(BaseModel):
    experiment: str
    grader: str | None
    cells: list[CellSummary]
    differences: list[PairedDifference]
    unfinished_runs: int
    ungraded_runs: int
    controls: list[str] = []  # organisms reported alone, never pooled into "all"
    # Organisms of runs written before runs recorded control status, not found in the registry
    # now (pooled into "all": compare with the `--organisms` folder that defines them).
    unresolved_organisms: list[str] = []

    def cell(self, organism: str, agent: str, budget: int, provider: str | None = None) -> CellSummary | None:
        for cell in self.cells:
            if (cell.organism, cell.agent, cell.budget) == (organism, agent, budget) and \
                    provider in (None, cell.provider):
                return cell
        return None

    @property
    def providers(self) -> list[str]:
        return sorted({cell.provider for cell in self.cells})


def bootstrap_interval(values: Sequence[float], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (a single value gives a zero-width interval)."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return (math.nan, math.nan)
    if len(data) == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(BOOTSTRAP_SAMPLES, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


def _summary(organism: str, agent: str, budget: int, provider: str,
             runs: list[tuple[Run, float]]) -> CellSummary:
    scores = [score for _, score in runs]
    low, high = bootstrap_interval(scores)
    costs = [run.cost_usd for run, _ in runs]
    return CellSummary(
        organism=organism, agent=agent, budget=budget, n=len(runs),
        mean_grade=float(np.mean(scores)), ci_low=low, ci_high=high,
        success_rate=sum(s >= SUCCESS_GRADE for s in scores) / len(scores),
        mean_tokens=float(np.mean([run.input_tokens + run.output_tokens for run, _ in runs])),
        cost_usd=None if any(c is None for c in costs) else float(sum(costs)),  # type: ignore[arg-type]
        provider=provider, provider_is_llm=all(run.provider_is_llm for run, _ in runs),
    )


def compare_experiment(store: Store, experiment: str, grader: str | None = None) -> Comparison:
    """The comparison of one experiment's finished, graded runs: per run the grade by `grader`
    (a run without one counts as ungraded), else its newest grade (`adl eval regrade` adds
    grades next to the old ones)."""
    found = store.require_experiment(experiment)
    if grader is not None:
        grader = store.require_grader(experiment, grader)
    runs = store.runs(found.id)  # type: ignore[arg-type]
    graded: list[tuple[Run, float]] = []
    ungraded = 0
    graders: set[str] = set()
    for run in runs:
        if run.status != "finished":
            continue
        chosen = store.current_grade(run.id, grader)  # type: ignore[arg-type]
        if chosen is None:
            ungraded += 1
            continue
        graders.add(chosen.grader)
        graded.append((run, chosen.score))
    unresolved: set[str] = set()
    controls = {run.organism for run, _ in graded if _run_is_control(run, unresolved)}
    cells: dict[tuple[str, str, int, str], list[tuple[Run, float]]] = defaultdict(list)
    for run, score in graded:
        cells[(run.organism, run.agent, run.budget, run.provider)].append((run, score))
        if run.organism not in controls:
            cells[(ALL_ORGANISMS, run.agent, run.budget, run.provider)].append((run, score))
    summaries = [_summary(o, a, b, p, rs) for (o, a, b, p), rs in sorted(cells.items())]

    pairs: dict[tuple[str, int, int, str], dict[str, float]] = defaultdict(dict)
    for run, score in graded:
        pairs[(run.organism, run.budget, run.repeat, run.provider)][run.agent] = score
    by_cell: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for (organism, budget, _, provider), scores in pairs.items():
        if "adl" in scores and "blackbox" in scores:
            difference = scores["adl"] - scores["blackbox"]
            by_cell[(organism, budget, provider)].append(difference)
            if organism not in controls:
                by_cell[(ALL_ORGANISMS, budget, provider)].append(difference)
    differences = []
    for (organism, budget, provider), values in sorted(by_cell.items()):
        low, high = bootstrap_interval(values)
        differences.append(PairedDifference(organism=organism, budget=budget, provider=provider,
                                            n_pairs=len(values),
                                            mean_difference=float(np.mean(values)), ci_low=low, ci_high=high))
    return Comparison(
        experiment=experiment, grader=", ".join(sorted(graders)) or None, cells=summaries,
        differences=differences, unfinished_runs=sum(r.status != "finished" for r in runs),
        ungraded_runs=ungraded, controls=sorted(controls), unresolved_organisms=sorted(unresolved),
    )


def write_csv(comparison: Comparison, path: Path) -> Path:
    """Cells and paired differences as one CSV (a `row` column tells them apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "organism", "agent", "budget", "n", "mean", "ci_low", "ci_high",
                         "success_rate", "mean_tokens", "cost_usd", "provider", "provider_is_llm"])
        for c in comparison.cells:
            writer.writerow(["grade", c.organism, c.agent, c.budget, c.n, f"{c.mean_grade:.4f}",
                             f"{c.ci_low:.4f}", f"{c.ci_high:.4f}", f"{c.success_rate:.4f}",
                             f"{c.mean_tokens:.1f}", "" if c.cost_usd is None else f"{c.cost_usd:.6f}",
                             c.provider, "yes" if c.provider_is_llm else "no (heuristic policy)"])
        for d in comparison.differences:
            writer.writerow(["adl_minus_blackbox", d.organism, "", d.budget, d.n_pairs,
                             f"{d.mean_difference:.4f}", f"{d.ci_low:.4f}", f"{d.ci_high:.4f}",
                             "", "", "", d.provider, ""])
    return path


AGENT_STYLE = {"adl": ("ADL agent", "#1f77b4"), "blackbox": ("Blackbox baseline", "#aaaaaa")}


def plot_comparison(comparison: Comparison, path: Path) -> Path:
    """Mean grade (95% bootstrap interval) per interaction budget, ADL agent next to the
    blackbox baseline, one panel per organism plus all organisms pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    organisms = sorted({c.organism for c in comparison.cells} - {ALL_ORGANISMS}) + [ALL_ORGANISMS]
    budgets = sorted({c.budget for c in comparison.cells})
    fig, axes = plt.subplots(1, len(organisms), figsize=(2.6 * len(organisms) + 1, 3.2), sharey=True,
                             squeeze=False)
    series = [(agent, provider) for provider in comparison.providers for agent in AGENT_KINDS]
    width = 0.8 / len(series)
    shades = ["#1f77b4", "#aaaaaa", "#2ca02c", "#777777", "#9467bd", "#cccccc"]
    for ax, organism in zip(axes[0], organisms, strict=True):
        for k, (agent, provider) in enumerate(series):
            label = AGENT_STYLE.get(agent, (agent, ""))[0]
            if len(comparison.providers) > 1 or provider.startswith("heuristic"):
                label += f" ({'heuristic, not an LLM' if provider.startswith('heuristic') else provider})"
            colour = AGENT_STYLE[agent][1] if len(series) == 2 else shades[k % len(shades)]
            offset = (k - (len(series) - 1) / 2) * width
            xs, means, errors = [], [], [[], []]
            for i, budget in enumerate(budgets):
                cell = comparison.cell(organism, agent, budget, provider)
                if cell is None:
                    continue
                xs.append(i + offset)
                means.append(cell.mean_grade)
                errors[0].append(max(0.0, cell.mean_grade - cell.ci_low))
                errors[1].append(max(0.0, cell.ci_high - cell.mean_grade))
            ax.bar(xs, means, width, yerr=errors, capsize=3, color=colour, label=label)
        ax.set_xticks(range(len(budgets)), [f"i={b}" for b in budgets])
        title = ("all organisms (no controls)" if organism == ALL_ORGANISMS
                 else organism + (" (control)" if organism in comparison.controls else ""))
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 5.2)
        ax.axhline(SUCCESS_GRADE, color="#cc4444", linewidth=0.8, linestyle="--")
    axes[0][0].set_ylabel(f"grade (1-5), {comparison.grader or 'grader'}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(series), fontsize=8, frameon=False)
    fig.suptitle(f"{comparison.experiment}: agent vs baseline by interaction budget", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
