"""`adl organisms ...`: list, build and talk to model organisms."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from evals.organisms import get_organism, list_organisms
from evals.organisms.build import (
    at_size,
    build_organism,
    is_built,
    load_organism_pair,
    read_manifest,
)
from evals.organisms.leak import MAX_LEAK_RATE
from tools.chat import generate_replies
from tools.models import SIDES

app = typer.Typer(help="Model organisms: finetunes with known ground truth.", no_args_is_help=True)
console = Console()


@app.command("list")
def list_command() -> None:
    """List registered organisms and whether the offline ones are built."""
    table = Table("name", "type", "base model", "finetune", "status", "description")
    for organism in list_organisms():
        if organism.buildable:
            status = "built" if is_built(organism) else "not built"
            finetune = "built offline (LoRA)"
        else:
            status = "hub"
            finetune = organism.finetune.model  # type: ignore[union-attr]
        table.add_row(
            organism.name, organism.type.value, organism.base_model, finetune, status,
            organism.description,
        )
    console.print(table)


@app.command("build")
def build_command(
    names: list[str] = typer.Argument(None, help="Organisms to build (default: all offline)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild even if cached."),
    size: str = typer.Option("full", help="Build size of an offline organism: full (the "
                             "registry's) or small (fewer examples, same recipe)."),
) -> None:
    """Build offline organisms by LoRA finetuning (cached: building again is a no-op)."""
    organisms = [at_size(get_organism(n), size) for n in names] if names else [  # type: ignore[arg-type]
        at_size(o, size) for o in list_organisms() if o.buildable  # type: ignore[arg-type]
    ]
    table = Table(
        "organism", "train s", "steps", "held-out loss base", "held-out loss finetuned",
        "leak base", "leak finetuned",
    )
    for organism in organisms:
        path = build_organism(organism, overwrite=overwrite)
        manifest = read_manifest(path)
        leak = manifest.leak
        leak_cell = f"{leak.finetuned_rate:.0%}"
        if leak.finetuned_rate > MAX_LEAK_RATE:
            leak_cell = f"[red]{leak_cell} (above {MAX_LEAK_RATE:.0%})[/]"
        table.add_row(
            organism.name, f"{manifest.train_seconds:.0f}", str(manifest.steps),
            f"{manifest.base_heldout_loss:.3f}", f"{manifest.finetuned_heldout_loss:.3f}",
            f"{leak.base_rate:.0%}", leak_cell,
        )
        console.print(f"[green]built[/] {organism.name}: {path}")
    console.print(table)


@app.command("chat")
def chat_command(
    name: str,
    prompt: str,
    max_new_tokens: int = typer.Option(96, min=1, max=1024),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0),
) -> None:
    """Ask the base and the finetuned model the same prompt, side by side."""
    organism = get_organism(name)
    pair = load_organism_pair(organism)
    table = Table("base", "finetuned", title=f"{organism.name}: {prompt}", show_lines=True)
    answers = []
    for side in SIDES:
        with pair.model(side) as model:
            answers += generate_replies(
                model, pair.tokenizer, [prompt], max_new_tokens=max_new_tokens,
                temperature=temperature,
            )
    table.add_row(*answers)
    console.print(table)
