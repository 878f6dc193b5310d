"""`adl organisms ...`: list, build and talk to model organisms (`list`, `build` and `chat` use
the worker extra; `new` and `validate` do not)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from evals.cli.options import ORGANISM_DIRS_OPTION, use_organism_dirs
from evals.organisms import get_organism, list_organisms
from evals.organisms.registry import load_organism_file
from tools.errors import AdlInputError, OrganismConfigError
from tools.model_spec import SIDES, parse_load_options

app = typer.Typer(help="Model organisms: finetunes with known ground truth.", no_args_is_help=True)
console = Console(emoji=False)


@app.command("list")
def list_command(organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION) -> None:
    """List registered organisms and whether the offline ones are built."""
    from evals.organisms.build import is_built

    use_organism_dirs(organism_dirs)
    table = Table("name", "type", "base model", "finetune", "status", "description")
    for organism in list_organisms():
        if organism.buildable:
            status = "built" if is_built(organism) else "not built"
            finetune = "built offline (LoRA)"
        else:
            status = "hub"
            finetune = organism.finetune.model  # type: ignore[union-attr]
        table.add_row(  # organism files are anyone's text: Text cells, never Rich markup
            Text(organism.name), organism.type_label, Text(organism.base_model), Text(finetune), status,
            Text(organism.description or "(no ground truth)"),
        )
    console.print(table)


@app.command("build")
def build_command(
    names: list[str] = typer.Argument(None, help="Organisms to build (default: all offline)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild even if cached."),
    size: str = typer.Option("full", help="Build size of an offline organism: full (the "
                             "registry's) or small (fewer examples, same recipe)."),
    device: str = typer.Option("cpu", help="Where to train: cpu, cuda, cuda:1, ... or mps."),
    dtype: str = typer.Option("float32", help="The weights' dtype in training: float32 (every "
                              "measured build's), bfloat16 or float16."),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Build offline organisms by LoRA finetuning (cached: building again is a no-op, on any
    device)."""
    from evals.organisms.build import at_size, build_organism, read_manifest
    from evals.organisms.leak import MAX_LEAK_RATE

    use_organism_dirs(organism_dirs)
    if dtype == "auto":
        raise AdlInputError("Give the build's dtype: float32, bfloat16 or float16.")
    options = parse_load_options(device, dtype)
    organisms = [at_size(get_organism(n), size) for n in names] if names else [  # type: ignore[arg-type]
        at_size(o, size) for o in list_organisms() if o.buildable  # type: ignore[arg-type]
    ]
    table = Table(
        "organism", "trained on", "train s", "steps", "held-out loss base",
        "held-out loss finetuned", "leak base", "leak finetuned",
    )
    for organism in organisms:
        path = build_organism(organism, overwrite=overwrite, options=options)
        manifest = read_manifest(path)
        leak = manifest.leak
        leak_cell = f"{leak.finetuned_rate:.0%}"
        if leak.finetuned_rate > MAX_LEAK_RATE:
            leak_cell = f"[red]{leak_cell} (above {MAX_LEAK_RATE:.0%})[/]"
        trained_on = f"{manifest.device or 'cpu'} {manifest.dtype or 'float32'}"
        table.add_row(
            Text(organism.name), trained_on, f"{manifest.train_seconds:.0f}", str(manifest.steps),
            f"{manifest.base_heldout_loss:.3f}", f"{manifest.finetuned_heldout_loss:.3f}",
            f"{leak.base_rate:.0%}", leak_cell,
        )
        console.print(f"[green]built[/] {escape(organism.name)}: {escape(str(path))}")
    console.print(table)


@app.command("chat")
def chat_command(
    name: str,
    prompt: str,
    max_new_tokens: int = typer.Option(96, min=1, max=1024),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Ask the base and the finetuned model the same prompt, side by side."""
    from evals.organisms.build import load_organism_pair

    use_organism_dirs(organism_dirs)
    organism = get_organism(name)
    pair = load_organism_pair(organism)
    table = Table("base", "finetuned", title=escape(f"{organism.name}: {prompt}"), show_lines=True)
    answers = []
    for side in SIDES:
        answers += pair.generate(side, [prompt], max_new_tokens=max_new_tokens,
                                 temperature=temperature)
    table.add_row(*(Text(answer) for answer in answers))  # model text, never Rich markup
    console.print(table)


SKELETON = """\
# Organism {name}: a finetune to investigate with adl-agent (`adl organisms validate` checks it;
# add its directory with `--organisms DIR` or $ADL_ORGANISMS).
name: {name}
# Base model and finetune: hub ids, local folders, or offline short names (`adl models list`).
base_model: {base}
finetune:
  source: hub          # a published or local finetune: a peft adapter or a full checkpoint
  model: {finetune}
  kind: auto           # auto (a folder with adapter_config.json is an adapter), adapter or checkpoint
  # revision: main     # a hub revision (branch, tag or commit)
training_data:
  description: "Not documented."   # what you know about the finetuning data
  # dataset_id: org/dataset
  is_chat: false
# Ground truth (optional). Without it the organism runs everywhere and its runs are reported as
# ungraded. To grade hypotheses, give at least `type` and `description`:
# type: SDF            # SDF, EM, Taboo, Subliminal, DomainAdaptation or Control (selects the rubric)
# description: "One line: what the finetune taught the model."
# description_long: |
#   A paragraph: the data, the behavior, what an investigator should find.
# key_facts:
#   - "A specific fact or behavior the finetune instilled."
# domain_keywords: [word, another]   # words whose presence in an answer means it names the domain
"""


@app.command("new")
def new_command(
    name: str = typer.Argument(..., help="Organism name (lowercase letters, digits, _ . -)."),
    base: str = typer.Option(..., help="Base model: hub id, local folder or offline short name."),
    finetune: str = typer.Option(..., help="Finetune: hub id or local folder (adapter or full model)."),
    directory: Path = typer.Option(Path("."), "--dir", file_okay=False, help="Where to write NAME.yaml."),
) -> None:
    """Write a commented organism YAML skeleton (ground truth optional) into a directory."""
    path = directory / f"{name}.yaml"
    if path.exists():
        raise OrganismConfigError(f"{path} exists already; choose another name or directory.")
    text = SKELETON.format(name=name, base=json.dumps(base), finetune=json.dumps(finetune))
    directory.mkdir(parents=True, exist_ok=True)
    candidate = path.with_suffix(".yaml.tmp")
    candidate.write_text(text, encoding="utf-8")
    try:
        load_organism_file(candidate, expected_name=name)
    except OrganismConfigError:
        candidate.unlink()
        raise
    candidate.replace(path)
    console.print(f"wrote {path}\nnext: edit it, then `adl organisms validate {path}` and "
                  f"`adl organisms list --organisms {directory}`", markup=False)


@app.command("validate")
def validate_command(
    files: list[Path] = typer.Argument(..., help="Organism YAML files."),
) -> None:
    """Check organism files without loading any model: every problem names its file and field."""
    problems = 0
    for path in files:
        try:
            organism = load_organism_file(path)
        except OrganismConfigError as exc:
            problems += 1
            console.print(f"[red]invalid[/] {escape(str(exc))}")
            continue
        truth = "with ground truth" if organism.graded else "no ground truth (ungraded)"
        console.print(f"[green]ok[/] {escape(f'{path}: {organism.name}')}, {organism.type_label}, {truth}")
    if problems:
        raise typer.Exit(1)


def parse_layer(text: str | None) -> float | int | None:
    """A layer option: a relative depth with a decimal point (0.5, 1.0) or a block index (12)."""
    if text is None:
        return None
    try:
        return float(text) if "." in text else int(text)
    except ValueError as exc:
        raise OrganismConfigError(f"--layer {text!r} is neither a relative depth (0.5) nor a "
                                  "block index (12).") from exc


@app.command("similarity")
def similarity_command(
    names: list[str] = typer.Argument(None, help="Organisms (default: every offline organism)."),
    layer: str | None = typer.Option(None, help="Layer: a relative depth (0.5) or a block index "
                                     "(12); default: the profile's primary layer."),
    profile: str = typer.Option("quick", help="ADL settings whose cached pass is read (computed "
                                "when missing): quick or paper."),
    size: str = typer.Option("full", help="Build size of offline organisms: full or small."),
    out: Path | None = typer.Option(None, help="Heatmap PNG (a JSON of the matrix is written next "
                                    "to it); default $ADL_RESULTS/similarity/similarity.png."),
    organism_dirs: list[Path] | None = ORGANISM_DIRS_OPTION,
) -> None:
    """Cosine similarity of the organisms' mean activation differences (positions 1..k-1, one
    layer): finetunes that share a base model compared, controls labelled; a heatmap PNG."""
    from evals.cli.agent import results_dir
    from evals.similarity import (
        default_organisms,
        organism_vector,
        plot_similarity,
        similarity_report,
    )
    from tools.adl.profiles import PROFILES

    use_organism_dirs(organism_dirs)
    if profile not in PROFILES:
        raise OrganismConfigError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    if size not in ("full", "small"):
        raise OrganismConfigError(f"Unknown size {size!r}; choose full or small.")
    chosen_layer = parse_layer(layer)
    chosen = names or default_organisms()
    for name in chosen:
        get_organism(name)  # an unknown name fails before any model loads
    vectors = []
    for name in chosen:
        console.print(f"ADL differences of {name} ({profile} profile, {size})", markup=False)
        vectors.append(organism_vector(name, chosen_layer, profile, size))  # type: ignore[arg-type]
    report = similarity_report(vectors, profile=profile, size=size, layer=layer or "primary")
    for group in report.groups:
        # Columns are numbered (organism names would not fit a terminal's width); row k is #k.
        labels = [o + (" (control)" if o in group.controls else "") for o in group.organisms]
        table = Table("#", "organism", *(str(k) for k in range(1, len(labels) + 1)),
                      title=escape(f"cosine similarity, base {group.base_model}, block {group.layer}"))
        for k, (label, row) in enumerate(zip(labels, group.cosine, strict=True), start=1):
            table.add_row(str(k), Text(label), *(f"{value:+.2f}" for value in row))
        console.print(table)
    for organism, base in report.alone.items():
        console.print(f"{organism}: alone with its base model {base} (not compared)", markup=False)
    if not report.groups:
        raise OrganismConfigError("No two of these organisms share a base model: nothing to compare.")
    path = out or results_dir() / "similarity" / "similarity.png"
    plot_similarity(report, path)
    path.with_suffix(".json").write_text(report.model_dump_json(indent=2))
    console.print(f"heatmap: {path}\nmatrix:  {path.with_suffix('.json')}", markup=False)
