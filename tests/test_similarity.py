"""`adl organisms similarity`: cosine similarity of organisms' mean activation differences,
same-base pairs only, controls labelled, a heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from evals.similarity import FinetuneVector, cosine_matrix, position_mean, similarity_report
from tools.adl.differences import ActivationDifference


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_zero_for_a_zero_vector() -> None:
    matrix = cosine_matrix([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]),
                            torch.tensor([-2.0, 0.0]), torch.zeros(2)])
    assert matrix[0, 1] == pytest.approx(2 ** -0.5) and matrix[1, 0] == pytest.approx(2 ** -0.5)
    assert matrix[0, 2] == pytest.approx(-1.0)
    assert list(matrix.diagonal()) == [1.0, 1.0, 1.0, 1.0]
    assert list(matrix[3, :3]) == [0.0, 0.0, 0.0]


def test_the_vector_leaves_position_zero_out() -> None:
    diff = torch.zeros(1, 3, 2)
    diff[0, 0] = torch.tensor([100.0, 0.0])  # the attention sink
    diff[0, 1] = torch.tensor([0.0, 1.0])
    diff[0, 2] = torch.tensor([0.0, 3.0])
    zeros = torch.zeros(1, 3)
    difference = ActivationDifference(layers=[5], n_positions=3, n_samples=1, mean_diff=diff,
                                      mean_base=diff, mean_finetuned=diff, norm_base=zeros,
                                      norm_finetuned=zeros)
    assert position_mean(difference, 5).tolist() == [0.0, 2.0]


def test_only_organisms_of_one_base_model_are_compared() -> None:
    def vector(name: str, base: str, values: list[float], control: bool = False) -> FinetuneVector:
        return FinetuneVector(organism=name, base_model=base, control=control, layer=3,
                              vector=torch.tensor(values, dtype=torch.float64))

    report = similarity_report([vector("a", "m1", [1, 0]), vector("b", "m1", [1, 0.1]),
                                vector("c", "m1", [0, 1], control=True), vector("d", "m2", [1, 0])],
                               profile="quick", size="full", layer="primary")
    [group] = report.groups
    assert group.organisms == ["a", "b", "c"] and group.controls == ["c"]
    assert group.nearest("a") == "b" and report.alone == {"d": "m2"}


def _organism(folder: Path, name: str, base: Path, adapter: Path, kind: str = "SDF") -> None:
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "base_model": str(base), "type": kind,
        "description": f"{name}: a test finetune of the tiny model.",
        "finetune": {"source": "hub", "model": str(adapter)},
        "training_data": {"description": "random LoRA weights"}}))


def _adapter(base: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.mark.slow
def test_similarity_command_on_tiny_organisms(tiny_model_dir: Path, tiny_adapter_dir: Path,
                                               adl_home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two organisms with the same adapter are identical (cosine 1); a control of another
    adapter is labelled; the heatmap and the matrix are written. (Organisms of another base
    model are listed apart: `test_only_organisms_of_one_base_model_are_compared`.)"""
    from typer.testing import CliRunner

    from evals.cli import app
    from evals.organisms.registry import ORGANISMS_ENV

    monkeypatch.setenv(ORGANISMS_ENV, "")  # --organisms adds to it: restored after the test
    organisms = tmp_path / "organisms"
    organisms.mkdir()
    _organism(organisms, "twin_a", tiny_model_dir, tiny_adapter_dir)
    _organism(organisms, "twin_b", tiny_model_dir, tiny_adapter_dir)
    _organism(organisms, "ctrl", tiny_model_dir, _adapter(tiny_model_dir, tmp_path / "ctrl", 2),
              kind="Control")
    monkeypatch.setenv("ADL_RESULTS", str(tmp_path / "results"))
    out = tmp_path / "plots" / "sim.png"
    result = CliRunner().invoke(app, ["organisms", "similarity", "twin_a", "twin_b", "ctrl",
                                      "--organisms", str(organisms), "--layer", "1.0",
                                      "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "ctrl (control)" in result.output
    report = json.loads(out.with_suffix(".json").read_text())
    [group] = report["groups"]
    assert group["organisms"] == ["twin_a", "twin_b", "ctrl"] and group["controls"] == ["ctrl"]
    assert group["layer"] == 3  # relative 1.0 of 4 blocks
    cosine = group["cosine"]
    assert cosine[0][1] == pytest.approx(1.0, abs=1e-6)
    assert abs(cosine[0][2]) < 0.99  # another adapter, another direction
    assert report["alone"] == {}
    assert out.stat().st_size > 10_000

    bad = CliRunner().invoke(app, ["organisms", "similarity", "twin_a", "--organisms",
                                   str(organisms), "--layer", "middle"])
    assert bad.exit_code != 0 and "--layer 'middle'" in str(bad.exception)
