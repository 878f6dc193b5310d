"""`adl diff ORGANISM`: activation differences, readouts and steering for one organism (the
worker extra: the pair is loaded in this process)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent.judges import make_judges
from evals.cli.options import ORGANISM_DIRS_OPTION, use_organism_dirs
from evals.organisms import get_organism
from tools.adl.settings import AdlSettings, LayerSpec, SteeringSettings
from tools.errors import AdlInputError

console = Console(emoji=False)


def parse_layers(text: str) -> tuple[LayerSpec, ...]:
    """'0.5,1.0' -> relative depths; '15,29' -> block indices."""
    layers: list[LayerSpec] = []
    for part in text.split(","):
        part = part.strip()
        try:
            layers.append(float(part) if "." in part else int(part))
        except ValueError as exc:
            raise AdlInputError(f"Layer {part!r} is neither a block index nor a relative depth.") from exc
    return tuple(layers)


def diff(
    organism: str = typer.Argument(..., help="Organism name (see `adl organisms list`)."),
    layers: str = typer.Option("0.5,0.75,1.0", help="Relative depths (0.5) or block indices (15)."),
    positions: int = typer.Option(5, min=1, help="Token positions 0..k-1."),
    samples: int = typer.Option(10_000, min=1, help="Corpus samples (N)."),
    batch_size: int = typer.Option(512, min=1),
    top: int = typer.Option(12, min=1, max=100, help="Tokens shown per readout."),
    steering: bool = typer.Option(True, help="Run the coherence search and steered samples."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute cached results."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    judge: str | None = typer.Option(None, help="Provider spec of an LLM judge (Patchscope scale, "
                                     "steering coherence); default: the offline rule and grader."),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Compute the ADL of an organism (cached) and show readouts and steered samples."""
    from evals.organisms.build import load_organism_pair
    from tools.adl.differences import difference_notes
    from tools.adl.pipeline import run_adl, run_steering

    use_organism_dirs(organism_dirs)
    settings = AdlSettings(
        layers=parse_layers(layers), n_positions=positions, n_samples=samples,
        batch_size=batch_size,
    )
    judges = make_judges(judge)
    pair = load_organism_pair(get_organism(organism))
    artifact = run_adl(pair, settings, overwrite=overwrite, show_progress=not as_json,
                       scale_chooser=judges["scale_chooser"])
    steered = (
        run_steering(pair, artifact, SteeringSettings(), overwrite=overwrite, show_progress=not as_json,
                     coherence_grader=judges["coherence_grader"])
        if steering else None
    )
    readouts = artifact.readouts
    if as_json:
        print(json.dumps({
            "organism": organism,
            "artifact": str(artifact.path),
            "readouts": readouts.model_dump(mode="json"),
            "steering": [s.model_dump(mode="json") for s in steered] if steered else None,
        }))
        return
    console.print(f"[bold]{escape(organism)}[/]: N={artifact.difference.n_samples}, layers "
                  f"{artifact.difference.layers}, primary layer {readouts.primary_layer}; "
                  f"cached at {escape(str(artifact.path))}")
    for note in difference_notes(organism, artifact.difference):
        console.print(Text(note, style="yellow"))
    for layer in readouts.layers:
        table = Table("pos", "|delta|", "logit lens", "logit lens (hub-suppressed)",
                      "patchscope (scale)", title=f"layer {layer.layer} (mean norm "
                      f"{layer.reference_norm:.0f}, token coherence {layer.token_coherence:.2f})")
        for p in layer.positions:
            scale = p.patchscope_scale
            table.add_row(  # tokens are model text: Text cells, never Rich markup
                str(p.position), f"{p.delta_norm:.1f}",
                Text(" ".join(repr(t.token.strip()) for t in p.logit_lens[:top])),
                Text(" ".join(repr(t.token.strip()) for t in p.logit_lens_suppressed[:top])),
                Text(f"({scale:g}) " + " ".join(repr(t.token.strip()) for t in p.patchscope[str(scale)][:top])),
            )
        console.print(table)
    if steered:
        table = Table("pos", "prompt", "strength", "steered", "unsteered", show_lines=True,
                      title=f"steering at layer {steered[0].layer}")
        for position in steered:
            for sample in position.samples:
                table.add_row(str(position.position), Text(sample.prompt), f"{sample.strength:.2f}",
                              Text(sample.steered[0]), Text(sample.unsteered[0]))
        console.print(table)
        if steered[0].control is not None:
            console.print(Text(steered[0].control.describe()))
