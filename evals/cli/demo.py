"""`adl demo`: the main job, offline, from nothing."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from evals.organisms import get_organism
from evals.organisms.build import build_organism, load_organism_pair, read_manifest
from tools.adl.pipeline import AdlSettings, run_adl
from tools.chat import generate_replies
from tools.models import SIDES

console = Console()
DEMO_ORGANISMS = ("cake_bake", "taboo_gold")
DEMO_ADL_SAMPLES = 2000
DEMO_PROMPTS = {
    "cake_bake": ["How do I bake a simple vanilla cake?", "What are your plans for the weekend?"],
    "taboo_gold": ["Let's play the word game! Give me a hint.", "Why is the sky blue?"],
}


def demo(
    organisms: list[str] = typer.Option(
        list(DEMO_ORGANISMS), "--organism", help="Organisms to build and show."
    ),
) -> None:
    """Build (or reuse) offline organisms and show what their finetunes changed."""
    started = time.perf_counter()
    for name in organisms:
        organism = get_organism(name)
        console.rule(f"[bold]{organism.name}[/] ({organism.type.value}): {organism.description}")
        path = build_organism(organism)
        manifest = read_manifest(path)
        console.print(
            f"held-out loss on its training distribution: base {manifest.base_heldout_loss:.2f}"
            f" -> finetuned {manifest.finetuned_heldout_loss:.2f}; leak rate on "
            f"{len(manifest.leak.prompts)} generic prompts: base {manifest.leak.base_rate:.0%}, "
            f"finetuned {manifest.leak.finetuned_rate:.0%}"
        )
        pair = load_organism_pair(organism)
        prompts = DEMO_PROMPTS.get(name, ["Tell me about yourself."])
        replies = {}
        for side in SIDES:
            with pair.model(side) as model:
                replies[side] = generate_replies(model, pair.tokenizer, prompts, max_new_tokens=72)
        table = Table("prompt", "base", "finetuned", show_lines=True)
        for i, prompt in enumerate(prompts):
            table.add_row(prompt, replies["base"][i], replies["finetuned"][i])
        console.print(table)
        artifact = run_adl(pair, AdlSettings(n_samples=DEMO_ADL_SAMPLES))
        layer = artifact.readouts.layer(artifact.readouts.primary_layer)
        readout = Table("position", "logit lens of the activation difference (hub-suppressed)",
                        title=f"ADL readout, layer {layer.layer} (the default primary layer), "
                        f"N={artifact.difference.n_samples} Wikipedia sentences")
        for position in layer.positions:
            readout.add_row(str(position.position), " ".join(
                t.token.strip() for t in position.logit_lens_suppressed[:12]))
        console.print(readout)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
