"""`adl models ...`: the offline models (the worker extra)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Models available offline.", no_args_is_help=True)
console = Console(emoji=False)


@app.command("list")
def list_models() -> None:
    """List the offline models (by short name)."""
    from tools.offline_models import OFFLINE_MODELS

    table = Table("name", "package", "description")
    for model in OFFLINE_MODELS.values():
        table.add_row(model.name, model.package, model.description)
    console.print(table)


@app.command("prepare")
def prepare(name: str, overwrite: bool = typer.Option(False, help="Convert again.")) -> None:
    """Convert an offline model from GGUF into the cache (done automatically on first use)."""
    from tools.offline_models import OFFLINE_MODELS, offline_model_dir

    if name not in OFFLINE_MODELS:
        from tools.models import resolve_model_location

        resolve_model_location(name)  # raises the unknown-model error listing known names
    console.print(f"{name}: {offline_model_dir(name, overwrite=overwrite)}")
