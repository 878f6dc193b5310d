"""Finetune similarity from activation differences (in the spirit of Delta Activations: a
finetune embedded by the shift it causes in the base model's activations).

Each organism's cached ADL pass gives a mean difference per layer and position. Its vector at one
layer is the mean of those differences over positions 1..k-1 (position 0, the attention sink, is
left out as in the readouts' reference norm). Two finetunes are compared by the cosine of their
vectors, only when they share a base model: differences of two base models live in different
residual spaces. Controls (organisms whose finetune has no narrow domain) are included and
labelled: how far they sit from everything is the floor a real similarity must clear.
"""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from evals.organisms import get_organism, list_organisms
from evals.organisms.schema import OrganismSize
from evals.workers import organism_worker_config
from tools.adl.differences import ActivationDifference, resolve_layers
from tools.adl.profiles import AnalysisProfile
from tools.adl.settings import LayerSpec
from tools.errors import AdlInputError

log = logging.getLogger(__name__)


@dataclass
class FinetuneVector:
    """One organism's mean activation difference at one layer (positions 1..k-1)."""

    organism: str
    base_model: str
    control: bool
    layer: int
    vector: torch.Tensor  # float64, d_model


class SimilarityGroup(BaseModel):
    """The cosine similarities of organisms that share a base model (rows and columns in
    `organisms` order)."""

    base_model: str
    layer: int = Field(description="The block the vectors were taken at.")
    organisms: list[str]
    controls: list[str]
    cosine: list[list[float]]

    def value(self, first: str, second: str) -> float:
        return self.cosine[self.organisms.index(first)][self.organisms.index(second)]

    def nearest(self, organism: str) -> str | None:
        """The other organism of the group with the highest cosine to `organism`."""
        others = [o for o in self.organisms if o != organism]
        return max(others, key=lambda other: self.value(organism, other)) if others else None


class SimilarityReport(BaseModel):
    """Groups of organisms with the same base model; organisms alone with theirs are listed
    apart (nothing to compare them with)."""

    profile: str
    size: str
    layer: str = Field(description="The layer as asked (relative depth or block index).")
    groups: list[SimilarityGroup]
    alone: dict[str, str] = Field(default_factory=dict, description="Organism -> its base model.")


def position_mean(difference: ActivationDifference, layer: int) -> torch.Tensor:
    """The mean difference at `layer` over positions 1..k-1 (position 0 when it is the only
    one), in float64."""
    deltas = difference.mean_diff[difference.layer_index(layer)].double()
    return deltas[1:].mean(0) if difference.n_positions > 1 else deltas[0]


def cosine_matrix(vectors: list[torch.Tensor]) -> np.ndarray:
    """Pairwise cosine similarities (a zero vector has cosine 0 with everything but itself)."""
    stacked = torch.stack([v.double() for v in vectors])
    norms = stacked.norm(dim=1, keepdim=True)
    unit = stacked / norms.clamp_min(1e-30)
    matrix = (unit @ unit.T).numpy()
    zero = (norms.squeeze(1) == 0).numpy()
    matrix[zero, :] = 0.0
    matrix[:, zero] = 0.0
    np.fill_diagonal(matrix, 1.0)
    return matrix


def organism_vector(name: str, layer: LayerSpec | None, profile: AnalysisProfile,
                    size: OrganismSize, show_progress: bool = True) -> FinetuneVector:
    """Load the organism's pair and its ADL pass of `profile` on its first dataset (cached by
    any earlier run: the worker computes the same entry; else computed now), and take its
    vector at `layer` (default: the profile's primary layer)."""
    from tools.adl.pipeline import run_adl
    from tools.models import load_model_pair

    config = organism_worker_config(name, profile, size=size)
    settings = config.adl.model_copy(update={"corpus": config.datasets[0]})
    pair = load_model_pair(config.pair, config.load, config.backend)
    try:
        block = resolve_layers([settings.primary_layer if layer is None else layer], pair.n_layers)[0]
        artifact = run_adl(pair, settings, show_progress=show_progress)
    finally:
        del pair
        gc.collect()
    difference: ActivationDifference = artifact.difference
    if block not in difference.layers:
        raise AdlInputError(f"Layer {layer} (block {block}) was not computed by the {profile} "
                            f"profile: its blocks are {difference.layers}.")
    organism = get_organism(name)
    return FinetuneVector(organism=name, base_model=organism.base_model,
                          control=organism.is_control, layer=block,
                          vector=position_mean(difference, block))


def default_organisms() -> list[str]:
    """Every offline (buildable) organism of the registry."""
    return [organism.name for organism in list_organisms() if organism.buildable]


def similarity_report(vectors: list[FinetuneVector], *, profile: str, size: str,
                      layer: str) -> SimilarityReport:
    """Group the vectors by base model and compute each group's cosine matrix."""
    by_base: dict[str, list[FinetuneVector]] = defaultdict(list)
    for vector in vectors:
        by_base[vector.base_model].append(vector)
    groups, alone = [], {}
    for base, members in sorted(by_base.items()):
        if len(members) == 1:
            alone[members[0].organism] = base
            continue
        layers = {m.layer for m in members}
        if len(layers) > 1:  # same base model, so the same depth resolves to the same block
            raise AdlInputError(f"Organisms of {base} were read at different blocks {sorted(layers)}.")
        matrix = cosine_matrix([m.vector for m in members])
        groups.append(SimilarityGroup(
            base_model=base, layer=layers.pop(), organisms=[m.organism for m in members],
            controls=[m.organism for m in members if m.control],
            cosine=[[round(float(x), 6) for x in row] for row in matrix]))
    return SimilarityReport(profile=profile, size=size, layer=layer, groups=groups, alone=alone)


def plot_similarity(report: SimilarityReport, path: Path) -> Path:
    """One annotated heatmap per base model; controls are marked "(control)"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not report.groups:
        raise AdlInputError("No two organisms share a base model: there is nothing to compare.")
    sizes = [len(g.organisms) for g in report.groups]
    fig, axes = plt.subplots(1, len(report.groups), squeeze=False,
                             figsize=(sum(1.0 * n + 2.5 for n in sizes), max(sizes) * 0.9 + 2))
    for ax, group in zip(axes[0], report.groups, strict=True):
        labels = [o + (" (control)" if o in group.controls else "") for o in group.organisms]
        image = ax.imshow(np.array(group.cosine), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i, row in enumerate(group.cosine):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 else "black")
        ax.set_title(f"{group.base_model}, block {group.layer}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine")
    fig.suptitle(f"Finetune similarity: cosine of mean activation differences (positions 1..k-1; "
                 f"{report.profile} profile, {report.size} organisms)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
