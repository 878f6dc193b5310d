"""benchmarks/gpu.py at toy size on the CPU, with the tiny test model: it runs and writes the
device, dtype, peak, achieved FLOP/s, fraction and seconds of both parts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_at_toy_size(tiny_model_dir: Path, tiny_adapter_dir: Path,
                                        adl_home: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        module.main(["--toy", "--device", "cpu", "--base", str(tiny_model_dir),
                     "--finetuned", str(tiny_adapter_dir), "--json", str(out),
                     "--final-samples", str(tmp_path / "final"), "--max-batch-size", "3"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["device_name"]
    assert result["dtype"] == "float32" == result["peak_dtype"]
    assert result["peak_gflops"] > 0
    for part in ("adl", "steering"):
        numbers = result[part]
        assert numbers["seconds"] > 0 and numbers["gflop"] > 0 and numbers["tokens"] > 0
        assert numbers["achieved_gflops"] > 0
        expected = numbers["achieved_gflops"] / result["peak_gflops"]
        assert numbers["fraction_of_peak"] == pytest.approx(expected, rel=0.02, abs=1e-4)
    assert result["adl"]["samples"] == 64 and result["adl"]["positions"] == 5
    assert set(result["steering"]["strengths"]) == {"1", "2"}
    assert result["steering"]["max_batch_size"] == 3
    assert 0 < result["steering"]["control_seconds"] < result["steering"]["seconds"]
    final = result["final_samples"]
    assert final["seconds"] > 0 and set(final["strengths"]) == {"1", "2"}
    steered = json.loads((tmp_path / "final" / "steering.json").read_text())
    assert [entry["position"] for entry in steered] == [1, 2]
    assert final["rows"] == sum(len(s["steered"]) for e in steered for s in e["samples"]) + final["prompts"]
