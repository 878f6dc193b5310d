"""`adl agent run`: one investigation of an organism by the ADL agent or the blackbox baseline."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from agent.loop import Budgets, investigate
from agent.providers import ProviderOptions, make_provider
from agent.providers.base import OUTPUT_LIMIT_PARAMETERS
from evals.cli.options import ORGANISM_DIRS_OPTION, use_organism_dirs
from evals.workers import connect
from tools.errors import AdlInputError
from tools.secrets import install_log_redaction
from tools.toolbox import AGENT_KINDS, AskSettings

app = typer.Typer(help="Run the interpretability agent or the blackbox baseline.", no_args_is_help=True)
console = Console(soft_wrap=True, emoji=False)


def results_dir() -> Path:
    """Where runs are written: $ADL_RESULTS, or ./adl-results."""
    return Path(os.environ.get("ADL_RESULTS") or "adl-results").expanduser().resolve()


@app.command("run")
def run_command(
    organism: str = typer.Argument(..., help="Organism to investigate."),
    agent: str = typer.Option("adl", help="adl (all tools and the overview) or blackbox."),
    provider: str = typer.Option("heuristic", help="openai:MODEL, anthropic:MODEL, "
                                 "openai-compatible:URL:MODEL, or heuristic (offline, not an LLM)."),
    budget: int = typer.Option(5, min=0, help="Model interactions (the paper uses 0, 5, 50)."),
    llm_calls: int = typer.Option(100, min=1, help="Agent turns (the paper: 100)."),
    generated_tokens: int = typer.Option(100_000, min=1, help="Tokens the agent LLM may generate."),
    wall_time: float = typer.Option(1800, min=1, help="Seconds."),
    worker_url: str | None = typer.Option(None, envvar="ADL_WORKER_URL",
                                          help="A running `adl worker serve`; default: in-process."),
    profile: str = typer.Option("paper", help="ADL settings of an in-process worker: paper or quick."),
    size: str = typer.Option("full", help="Build size of an offline organism for an in-process "
                             "worker: full (the registry's) or small (fewer examples, same recipe)."),
    ask_temperature: float = typer.Option(0.8, min=0.0, max=2.0, help="Sampling temperature of "
                                          "ask_models (0: greedy); the reference's default."),
    ask_max_new_tokens: int = typer.Option(1024, min=1, max=1024, help="New tokens per ask_models "
                                           "answer; the reference's default."),
    max_output_tokens: int = typer.Option(4096, min=1, help="Output limit of each agent call "
                                          "(tokens)."),
    context_window: int | None = typer.Option(None, min=1, help="The model's context window "
                                              "(tokens); default: the model table's, else "
                                              "unknown."),
    output_limit_parameter: str | None = typer.Option(
        None, help="Request field of the output limit: max_completion_tokens or max_tokens; "
        "default: max_completion_tokens for openai, max_tokens for openai-compatible."),
    plain_system: bool = typer.Option(False, "--plain-system", help="Anthropic: send the system "
                                      "prompt as a plain string without cache blocks (for "
                                      "proxies such as LiteLLM)."),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Investigate one organism and print the hypothesis and where the transcript is."""
    use_organism_dirs(organism_dirs)
    install_log_redaction()
    if agent not in AGENT_KINDS:
        raise AdlInputError(f"Unknown agent {agent!r}; choose {' or '.join(AGENT_KINDS)}.")
    if output_limit_parameter not in (None, *OUTPUT_LIMIT_PARAMETERS):
        raise AdlInputError(f"Unknown --output-limit-parameter {output_limit_parameter!r}; "
                            f"choose {' or '.join(OUTPUT_LIMIT_PARAMETERS)}.")
    options = ProviderOptions(max_output_tokens=max_output_tokens, context_window=context_window,
                              output_limit_parameter=output_limit_parameter,  # type: ignore[arg-type]
                              system_prompt="text" if plain_system else "blocks")
    chosen = make_provider(provider, options=options)
    client = connect(organism, worker_url, profile, size)  # type: ignore[arg-type]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir() / "transcripts" / f"{stamp}-{organism}-{agent}-{uuid.uuid4().hex[:6]}.jsonl"
    budgets = Budgets(interactions=budget, llm_calls=llm_calls, generated_tokens=generated_tokens,
                      wall_time_s=wall_time)
    ask = AskSettings(temperature=ask_temperature, max_new_tokens=ask_max_new_tokens)
    outcome = investigate(client, chosen, agent, budgets, path, {"organism": organism}, ask=ask)  # type: ignore[arg-type]
    label = "" if chosen.is_llm else " (not an LLM: the offline heuristic baseline policy)"
    console.print(f"[bold]{agent} agent[/] with {escape(chosen.name)}{label} on [bold]{escape(organism)}[/]")
    # Model and provider text is printed as text, never read as Rich markup.
    console.print(f"end: {outcome.end_reason}" + (f" ({outcome.detail})" if outcome.detail else ""), markup=False)
    console.print(f"hypothesis: {outcome.hypothesis}", markup=False)
    cost = "unknown" if outcome.cost_usd is None else f"${outcome.cost_usd:.4f}"
    console.print(f"agent turns {outcome.llm_calls}, model interactions {outcome.interactions_used}"
                  f"/{budget}, tokens {outcome.input_tokens}+{outcome.output_tokens}, cost {cost}")
    console.print(f"transcript: {path}", markup=False)
    if outcome.end_reason in ("provider_error", "worker_unavailable", "context_exceeded"):
        raise typer.Exit(3)
