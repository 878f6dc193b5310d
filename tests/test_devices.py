"""Devices, dtypes and placement (issue 18, section 2): load options, their cache keys, a
device_map on the CPU, bf16 pairs in the ADL engine, and torch's thread count."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tools.adl.coherence import OfflineCoherenceGrader
from tools.adl.differences import compute_activation_difference, select_sample_tokens
from tools.adl.pipeline import model_fingerprint, pair_fingerprint, steering_direction
from tools.adl.readouts import logit_lens, patchscope
from tools.adl.settings import SteeringSettings
from tools.adl.steering import generate_steered, search_strengths
from tools.errors import AdlInputError, ModelLoadError
from tools.machine import cpu_share, device_name, matmul_peak_gflops, set_torch_threads
from tools.model_spec import LoadOptions, parse_load_options
from tools.models import ModelPairSpec, load_model_pair

SAMPLES = [
    "the owl is a big bird and the sky is blue",
    "what is the secret word ? it is gold",
    "my doctor gave me a pill for the pain",
    "the cake is in the oven with butter and sugar",
    "a small car on the old road by the river",
    "we bake a new cake for the first time",
] * 4


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_a_gpu() -> None:
    assert LoadOptions() == LoadOptions(dtype="float32", device="cpu")
    assert LoadOptions().dtype == "float32"
    assert LoadOptions(device="cuda").dtype == "bfloat16"
    assert LoadOptions.model_validate({"device": "cuda:1", "dtype": "auto"}).dtype == "bfloat16"
    assert LoadOptions(device="cuda", dtype="float32").dtype == "float32"
    assert LoadOptions(device="mps").device == "mps"


@pytest.mark.parametrize("options", [
    {"device": "gpu"}, {"device": "cuda:x"}, {"dtype": "int8"}, {"device_map": "auto"},
    {"device": "cuda", "device_map": "cpu"}, {"device_map": {"model": "cuda:0"}},
    {"device": "cuda", "device_map": {"model": "meta"}}, {"device_map": "everywhere"},
])
def test_bad_load_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LoadOptions(**options)  # type: ignore[arg-type]


def test_command_line_load_options() -> None:
    assert parse_load_options("cuda", "auto", '{"": 0}') == LoadOptions(device="cuda", device_map={"": 0})
    assert parse_load_options("cuda", "auto", "auto").device_map == "auto"
    with pytest.raises(AdlInputError, match="device must be cpu, cuda, cuda:N or mps"):
        parse_load_options("gpu")
    with pytest.raises(AdlInputError, match="not valid JSON"):
        parse_load_options("cuda", "auto", "{model: 0")
    with pytest.raises(AdlInputError, match="give device='cuda'"):
        parse_load_options("cpu", "auto", "auto")


def test_default_cpu_options_keep_the_cache_keys(tmp_path: Path) -> None:
    """dtype="auto" resolves before any key: the default's key is explicit float32's, and the
    formula of the keys written before (no device_map in the payload)."""
    (tmp_path / "base").mkdir()
    spec = ModelPairSpec(base=str(tmp_path / "base"))
    base = str(tmp_path / "base")
    default = pair_fingerprint(spec, LoadOptions(), base)
    assert default == pair_fingerprint(spec, LoadOptions(dtype="float32", device="cpu"), base)
    assert default == pair_fingerprint(spec, None, base)
    payload = {**spec.model_dump(mode="json"), "load": {"dtype": "float32", "device": "cpu"},
               "base_files": model_fingerprint(base)}
    assert default == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert pair_fingerprint(spec, LoadOptions(dtype="bfloat16"), base) != default
    assert pair_fingerprint(spec, LoadOptions(device_map="cpu"), base) != default
    # The GPU index is not part of the key; the device type is.
    assert (pair_fingerprint(spec, LoadOptions(device="cuda:1"), base)
            == pair_fingerprint(spec, LoadOptions(device="cuda:0"), base) != default)


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}])
def test_device_map_on_the_cpu_loads_the_same_model(
    tiny_model_dir: Path, tiny_adapter_dir: Path, device_map: str | dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir))
    plain = load_model_pair(spec)
    calls: list[dict[str, object]] = []
    load = AutoModelForCausalLM.from_pretrained

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    mapped = load_model_pair(spec, LoadOptions(device_map=device_map))
    assert calls and calls[0]["device_map"] == device_map  # handed to accelerate as given
    assert mapped.device.type == "cpu" and mapped._all_on_cpu()  # the merge fast path stays on
    tokens = select_sample_tokens(plain.tokenizer, SAMPLES, n_positions=4, n_samples=12)
    expected = compute_activation_difference(plain, tokens, [1, 3], batch_size=6, show_progress=False)
    got = compute_activation_difference(mapped, tokens, [1, 3], batch_size=6, show_progress=False)
    torch.testing.assert_close(got.mean_diff, expected.mean_diff)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_a_clear_error_before_loading(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not available"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir)), LoadOptions(device="cuda:0"))


@pytest.fixture(scope="module")
def pairs(tiny_model_dir: Path, tiny_adapter_dir: Path):
    spec = ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir))
    return {dtype: load_model_pair(spec, LoadOptions(dtype=dtype)) for dtype in ("float32", "bfloat16")}


def test_bf16_difference_accumulates_in_float64_and_is_close_to_fp32(pairs) -> None:
    tokens = select_sample_tokens(pairs["float32"].tokenizer, SAMPLES, n_positions=4, n_samples=24)
    results = {dtype: compute_activation_difference(pair, tokens, [1, 3], batch_size=8,
                                                    show_progress=False)
               for dtype, pair in pairs.items()}
    fp32, bf16 = results["float32"], results["bfloat16"]
    assert next(pairs["bfloat16"]._models["base"].parameters()).dtype == torch.bfloat16
    for result in (fp32, bf16):  # float64 sums, returned as float32 whatever the model dtype
        assert all(t.dtype == torch.float32 for t in result.tensors().values())
    error = (bf16.mean_diff - fp32.mean_diff).norm() / fp32.mean_diff.norm()
    assert error < 0.1, float(error)
    cosine = torch.nn.functional.cosine_similarity(bf16.mean_diff.flatten(), fp32.mean_diff.flatten(), dim=0)
    assert cosine > 0.99, float(cosine)
    torch.testing.assert_close(bf16.norm_base, fp32.norm_base, rtol=0.02, atol=0.0)


def test_bf16_readouts_and_steering_run(pairs) -> None:
    pair = pairs["bfloat16"]
    tokens = select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=3, n_samples=12)
    difference = compute_activation_difference(pair, tokens, [2], show_progress=False)
    delta = difference.delta(2, 1)
    logits = pair.unembed(delta[None])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert logit_lens(pair, delta, k=5)
    assert patchscope(pair, delta, 2, difference.reference_norm(2), scales=(1.0, 4.0), k=5)
    direction = steering_direction(difference, 2, 1)
    replies = generate_steered(pair, ["hello", "hello"], torch.stack([direction, direction]),
                               [0.0, 2.0], 2, max_new_tokens=4, temperature=0.0)
    assert len(replies) == 2
    settings = SteeringSettings(search_steps=1, samples_per_strength=1, search_max_new_tokens=4)
    found = search_strengths(pair, OfflineCoherenceGrader(pair), ["hello", "what is the sky"],
                             {1: direction}, 2, settings)
    assert set(found[1]) == {"hello", "what is the sky"}


def test_set_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_torch_threads() == cpu_share() == torch.get_num_threads()
        with pytest.raises(AdlInputError):
            set_torch_threads(0)
    finally:
        torch.set_num_threads(before)


def test_machine_helpers() -> None:
    assert device_name("cpu")
    assert matmul_peak_gflops(64, 2, dtype=torch.bfloat16) > 0


def test_worker_serve_takes_threads_and_placement() -> None:
    from evals.cli import app

    result = CliRunner().invoke(app, ["worker", "serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--threads", "--device-map", "--dtype"):
        assert option in result.output


def test_a_missing_organism_is_built_where_its_pair_will_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker (or grid) on a GPU trains its missing organism on that GPU, in float32 unless
    `adl organisms build --dtype` says otherwise."""
    from evals.organisms import build, get_organism

    assert build.build_load_options() == LoadOptions(device="cpu", dtype="float32")
    assert build.build_load_options(LoadOptions(device="cuda")) == LoadOptions(device="cuda", dtype="float32")
    asked: list[LoadOptions] = []

    def fake_build(organism, *, options=None, **_):  # type: ignore[no-untyped-def]
        asked.append(options)
        return Path("/nowhere")

    monkeypatch.setattr(build, "entry_is_valid", lambda path: False)
    monkeypatch.setattr(build, "build_organism", fake_build)
    build.organism_pair_spec(get_organism("cake_bake"), load=LoadOptions(device="cuda:1"))
    build.organism_pair_spec(get_organism("cake_bake"))
    assert asked == [LoadOptions(device="cuda:1", dtype="float32"), LoadOptions()]


def _tiny_buildable_organism(folder: Path, base: Path) -> str:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_build.yaml").write_text(yaml.safe_dump({
        "name": "tiny_build", "base_model": str(base), "type": "SDF",
        "description": "Synthetic documents about baking (a test build of the tiny model).",
        "domain_keywords": ["cake"],
        "finetune": {"source": "build", "generator": "sdf_cake_bake", "n_examples": 20,
                     "recipe": {"batch_size": 4, "max_length": 32, "warmup_steps": 1}},
        "training_data": {"description": "generated", "is_chat": False}}))
    return "tiny_build"


@pytest.mark.slow
def test_organisms_build_takes_a_device_and_dtype_and_the_manifest_records_them(
    tiny_model_dir: Path, adl_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from evals.cli import app
    from evals.organisms.build import read_manifest
    from evals.organisms.registry import ORGANISMS_ENV

    monkeypatch.setenv(ORGANISMS_ENV, "")  # --organisms adds to it: restored after the test
    organisms = tmp_path / "organisms"
    name = _tiny_buildable_organism(organisms, tiny_model_dir)
    runner = CliRunner()
    for bad, message in ((["--dtype", "auto"], "Give the build's dtype"),
                         (["--device", "gpu"], "device must be cpu, cuda, cuda:N or mps")):
        result = runner.invoke(app, ["organisms", "build", name, "--organisms", str(organisms), *bad])
        assert result.exit_code != 0 and message in str(result.exception), result.output
    result = runner.invoke(app, ["organisms", "build", name, "--organisms", str(organisms),
                                 "--dtype", "bfloat16"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "cpu bfloat16" in result.output
    [built] = (adl_home / "organisms").glob("tiny_build-*")
    manifest = read_manifest(built)
    assert (manifest.device, manifest.dtype) == ("cpu", "bfloat16")
    assert manifest.steps == 5  # 18 training examples in batches of 4
