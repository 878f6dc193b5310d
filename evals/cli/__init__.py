"""The `adl` command line: one module per command group."""

from __future__ import annotations

import logging
import sys
import warnings

import typer
from rich.console import Console
from rich.logging import RichHandler

from evals.cli import agent, demo, diff, experiments, investigate, models, organisms, worker
from tools.errors import AdlError

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

error_console = Console(stderr=True)


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=error_console, show_path=False)],
    )
    for noisy in ("httpx", "urllib3", "transformers", "peft", "huggingface_hub", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def main() -> None:
    """Console entry point: typed errors become a clear message and exit code 2."""
    try:
        app()
    except AdlError as exc:
        error_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
