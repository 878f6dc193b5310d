"""`adl eval run|compare|regrade|show` and `adl view`: experiments, comparisons, transcripts.

Model and provider text (hypotheses, transcripts, errors, provider names) is printed as text:
escaped, in `Text` cells or with `markup=False`, never read as Rich markup."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.transcript import MessageData
from evals.cli.agent import results_dir
from evals.cli.options import ORGANISM_DIRS_OPTION, use_organism_dirs
from evals.compare import Comparison, compare_experiment, plot_comparison, write_csv
from evals.runs import check_experiment_name, load_eval_config, regrade_experiment, run_experiment
from evals.store import Store, open_store
from tools.errors import AdlInputError

app = typer.Typer(help="Evaluation runs: grids of agent runs, comparisons, transcripts.",
                  no_args_is_help=True)
console = Console(soft_wrap=True, emoji=False)
DATABASE_HELP = "SQLAlchemy URL; default $ADL_DATABASE_URL or $ADL_RESULTS/adl.db."


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="Eval config YAML (see evals/configs/)."),
    database: str | None = typer.Option(None, help=DATABASE_HELP),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
    on_ray: bool = typer.Option(False, "--ray", help="Run the grid on Ray (as `executor: ray`): "
                                "a new local cluster unless an address is given."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="The Ray cluster to join "
                                           "('auto', host:6379 or ray://host:10001); implies --ray."),
) -> None:
    """Run (or resume) an experiment grid: finished units are skipped, interrupted ones redone.
    With --ray, on a Ray cluster (README, "Scaling out")."""
    from tools.secrets import install_log_redaction

    use_organism_dirs(organism_dirs)
    install_log_redaction()
    eval_config = load_eval_config(config)
    if on_ray or ray_address:
        ray_options = eval_config.ray.model_copy(update={"address": ray_address or eval_config.ray.address})
        eval_config = eval_config.model_copy(update={"executor": "ray", "ray": ray_options})
    summary = run_experiment(eval_config, results_dir(), open_store(database))
    console.print(f"experiment [bold]{escape(summary.experiment)}[/]: {summary.units} units, "
                  f"{summary.skipped} already stored, {summary.ran} run now, "
                  f"{len(summary.failed)} failed")
    if summary.elsewhere:
        console.print(f"{summary.elsewhere} units were left to another runner of this experiment")
    for failure in summary.failed:
        console.print(f"  [red]failed[/] {escape(failure)}")
    console.print(f"compare: adl eval compare {summary.experiment}", markup=False)
    if summary.failed:
        raise typer.Exit(1)


def comparison_table(comparison: Comparison) -> Table:
    """Mean grade [95% CI] per organism, agent and budget, with success, tokens and cost."""
    providers = sorted({cell.provider for cell in comparison.cells})
    caption = "providers: " + ", ".join(
        p + (" (not an LLM: offline heuristic baseline policy)" if p.startswith("heuristic") else "")
        for p in providers)
    several = len(providers) > 1
    columns = ["organism", "agent", "i", "n", "grade", "95% CI", "success", "tokens", "cost"]
    table = Table(*columns, *(["provider"] if several else []),
                  caption=escape(caption + "; 'all' leaves controls out"),
                  title=escape(f"{comparison.experiment} (grader: {comparison.grader})"))
    for cell in comparison.cells:
        cost = "unknown" if cell.cost_usd is None else f"${cell.cost_usd:.2f}"
        table.add_row(Text(cell.organism), cell.agent, str(cell.budget), str(cell.n),
                      f"{cell.mean_grade:.2f}", f"{cell.ci_low:.2f}-{cell.ci_high:.2f}",
                      f"{cell.success_rate:.0%}", f"{cell.mean_tokens:.0f}", cost,
                      *([Text(cell.provider)] if several else []))
    return table


def difference_table(comparison: Comparison) -> Table:
    several = len(comparison.providers) > 1
    table = Table("organism", "budget", "pairs", "ADL - blackbox [95% CI]", *(["provider"] if several else []),
                  title="paired difference (same organism, budget, repeat, provider)")
    for d in comparison.differences:
        table.add_row(Text(d.organism), str(d.budget), str(d.n_pairs),
                      f"{d.mean_difference:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]",
                      *([Text(d.provider)] if several else []))
    return table


def compare_and_report(store: Store, experiment: str, out: Path | None = None,
                       grader: str | None = None) -> Comparison:
    """Print the comparison tables and write the plot and CSV; returns the comparison."""
    check_experiment_name(experiment)  # it names a folder under the results folder
    comparison = compare_experiment(store, experiment, grader)
    if comparison.grader and ", " in comparison.grader:
        console.print(f"[yellow]runs graded by different graders[/]: {escape(comparison.grader)} "
                      "(`adl eval regrade` grades them all with one; `--grader NAME` picks one)")
    if comparison.ungraded_runs:
        console.print(f"[yellow]{comparison.ungraded_runs} finished runs are ungraded[/] (their organism "
                      "has no ground truth, or grading failed: `adl eval run` again retries it)")
    if comparison.unresolved_organisms:
        console.print(f"[yellow]not in the registry[/]: {escape(', '.join(comparison.unresolved_organisms))} "
                      "(runs stored before control status was recorded; counted as no control and "
                      "pooled into \"all\": pass the `--organisms` folder that defines them)")
    if not comparison.cells:
        if comparison.ungraded_runs:
            return comparison
        raise AdlInputError(f"Experiment {experiment!r} has no graded runs yet.")
    console.print(comparison_table(comparison))
    if comparison.differences:
        console.print(difference_table(comparison))
    folder = out or results_dir() / "comparisons" / experiment
    plot = plot_comparison(comparison, folder / "comparison.png")
    table = write_csv(comparison, folder / "comparison.csv")
    if comparison.unfinished_runs:
        console.print(f"[yellow]{comparison.unfinished_runs} runs are unfinished[/] (run the eval again to finish them)")
    console.print(f"plot: {plot}\ncsv:  {table}")
    return comparison


@app.command("compare")
def compare_command(
    experiment: str = typer.Argument(..., help="Experiment name."),
    out: Path | None = typer.Option(None, help="Folder for the plot and CSV."),
    database: str | None = typer.Option(None, help=DATABASE_HELP),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
    grader: str | None = typer.Option(None, help="Use this grader's grades (e.g. "
                                      "offline-embedding-v4, llm:openai:gpt-5, which picks its one "
                                      "prompt version @prompts-…); default: each "
                                      "run's newest grade, so an offline regrade after an LLM "
                                      "grade is what is compared unless this names the LLM's."),
) -> None:
    """Agent vs baseline: mean grades with 95% bootstrap intervals, paired differences,
    success rate, tokens and cost; writes a PNG plot and a CSV."""
    use_organism_dirs(organism_dirs)
    compare_and_report(open_store(database), experiment, out, grader)


@app.command("regrade")
def regrade_command(
    experiment: str = typer.Argument(..., help="Experiment name."),
    grader: str = typer.Option("offline", help="offline, or a provider spec for the LLM grader "
                               "(openai:MODEL, anthropic:MODEL)."),
    grader_repeats: int = typer.Option(3, min=1, max=10, help="LLM grader: grades averaged per run."),
    database: str | None = typer.Option(None, help=DATABASE_HELP),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Grade an experiment's stored hypotheses again (a new grader version, or an LLM grader),
    without re-running any agent; the old grades stay. Runs already graded by this grader are
    skipped, so an interrupted regrade resumes."""
    from evals.grading import make_grader
    from tools.secrets import install_log_redaction

    use_organism_dirs(organism_dirs)
    install_log_redaction()
    check_experiment_name(experiment)
    summary = regrade_experiment(open_store(database), experiment,
                                 make_grader(grader, grader_repeats), show_progress=True)
    console.print(f"experiment [bold]{escape(summary.experiment)}[/] by {escape(summary.grader)}: "
                  f"{summary.graded} graded now, {summary.already} already graded by it, "
                  f"{summary.not_graded} not graded (unfinished, no ground truth or not in the "
                  f"registry), {len(summary.failed)} failed")
    if summary.unknown_organisms:
        console.print(f"[yellow]not in the registry[/]: {escape(', '.join(summary.unknown_organisms))} "
                      "(pass the `--organisms` folder that defines them)")
    for failure in summary.failed:
        console.print(f"  [red]failed[/] {escape(failure)}")
    if summary.stopped:
        console.print("[red]stopped after failures in a row[/]: the grades made so far are "
                      "stored; fix the cause and run the same command again to go on")
    if summary.failed:
        raise typer.Exit(1)


@app.command("show")
def show_command(
    run_id: int = typer.Argument(..., help="Run id (see `adl view` or the CSV)."),
    as_json: bool = typer.Option(False, "--json", help="Export the run as JSON."),
    database: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """A run's transcript: messages, tool calls with arguments and results, budgets, grade."""
    store = open_store(database)
    run = store.run(run_id)
    if run is None:
        raise AdlInputError(f"No run {run_id}.")
    grades = store.grades(run_id)
    if as_json:
        print(json.dumps({
            "run": run.model_dump(mode="json"),
            "messages": [m.model_dump(mode="json") for m in store.messages(run_id)],
            "tool_calls": [c.model_dump(mode="json") for c in store.tool_calls(run_id)],
            "usage": [u.model_dump(mode="json") for u in store.usage(run_id)],
            "grades": [g.model_dump(mode="json") for g in grades],
        }, indent=2, ensure_ascii=False))
        return
    transcript = store.transcript(run_id)  # a transcript line that is not an event: a clear error
    label = "" if run.provider_is_llm else " (not an LLM: offline heuristic baseline policy)"
    console.print(Panel(Text(
        f"organism {run.organism} | agent {run.agent} | budget {run.budget} | repeat {run.repeat}\n"
        f"provider {run.provider}{label} | status {run.status} | end {run.end_reason}"
        + (f" ({run.detail})" if run.detail else "")
        + f"\nturns {run.llm_calls} | interactions {run.interactions_used}/{run.budget} | tokens "
        f"{run.input_tokens}+{run.output_tokens} | cost "
        + ("unknown" if run.cost_usd is None else f"${run.cost_usd:.4f}")),
        title=f"run {run.id}"))
    started = store.run_started(run_id)
    if started is not None and started.worker is not None:  # worker text as text, never markup
        worker = started.worker
        console.print(Text(f"worker: backend {worker.backend or 'not recorded'}, tokenizer "
                           f"{worker.tokenizer or 'not recorded'}"))
        for note in worker.notes:
            console.print(Text(f"  worker note: {note}", style="yellow"))
    for item in transcript:
        if isinstance(item, MessageData):
            if item.role == "system":
                continue
            text = item.content or "(tool calls only)"
            console.print(f"[bold cyan]{item.role}[/]: ", end="")
            console.print(text if len(text) < 2000 else text[:2000] + " ...", markup=False)
        else:
            status = "ok" if item.ok else "error"
            console.print(f"  [bold magenta]tool {escape(item.name)}[/] ({status}, {item.interactions} "
                          f"interactions, {item.latency_s:.2f} s, left: {item.interactions_left})")
            console.print(f"    arguments: {item.arguments}", markup=False)
            body = json.dumps(item.result, ensure_ascii=False) if item.ok else item.error
            console.print(f"    {'result' if item.ok else 'error'}: {(body or '')[:1500]}", markup=False)
    console.print("[bold]hypothesis[/]: ", end="")
    console.print(str(run.hypothesis), markup=False)
    for grade in grades:  # oldest first; the last is the one compare and export read
        current = " (current)" if len(grades) > 1 and grade is grades[-1] else ""
        console.print(f"[bold]grade[/] {grade.score:.2f} by {escape(grade.grader)}{current}: ", end="")
        console.print(grade.reasoning, markup=False)


@app.command("export")
def export_command(
    experiment: str = typer.Argument(..., help="Experiment name."),
    export_format: str = typer.Option("inspect", "--format", help="inspect (Inspect eval logs, "
                                      "one per agent, budget and provider), csv or jsonl (one "
                                      "row per run)."),
    out: Path | None = typer.Option(None, help="Folder to write into (default: "
                                    "$ADL_RESULTS/exports/EXPERIMENT/FORMAT)."),
    database: str | None = typer.Option(None, help=DATABASE_HELP),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
    grader: str | None = typer.Option(None, help="Export this grader's grades; default: each "
                                      "run's newest (as `adl eval compare`)."),
) -> None:
    """Export an experiment's runs: Inspect eval logs (`inspect view`, its log API and
    dataframes) or a CSV / JSON lines table. Read-only on the store; repeat it at any time."""
    from evals.export import export_experiment

    use_organism_dirs(organism_dirs)
    check_experiment_name(experiment)  # it names a folder under the results folder
    if export_format == "inspect" and importlib.util.find_spec("inspect_ai") is None:
        raise AdlInputError("The Inspect export needs inspect_ai: pip install 'adl-agent[inspect]'.")
    folder = out or results_dir() / "exports" / experiment / export_format
    paths = export_experiment(open_store(database), experiment, export_format, folder, grader)  # type: ignore[arg-type]
    for path in paths:
        console.print(str(path), markup=False)
    if export_format == "inspect":
        console.print(f"{len(paths)} Inspect logs; read them with: inspect view --log-dir {folder}",
                      markup=False)


def view_command(
    host: str = typer.Option("127.0.0.1", help="Bind address; non-loopback needs --allow-remote."),
    port: int = typer.Option(8766),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Serve to other machines (no auth)."),
    allowed_host: list[str] | None = typer.Option(
        None, "--allowed-host", help="A further Host header name to accept (repeatable; for a "
        "name other machines use). Default: loopback names and the bind address."),
    database: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """Browse experiments, comparisons and transcripts in a read-only local web viewer."""
    from evals.viewer import serve_viewer

    serve_viewer(open_store(database), host=host, port=port, allow_remote=allow_remote,
                 extra_host_names=allowed_host or ())
