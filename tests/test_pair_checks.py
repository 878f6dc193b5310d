"""Pairs that cannot be diffed fail before any weights are loaded, with an error that names the
problem and what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tools.models
from tests.conftest import save_tiny_model
from tools.errors import ModelLoadError
from tools.models import ModelPairSpec, load_model_pair
from tools.pair_checks import declared_base_note


@pytest.fixture(autouse=True)
def no_model_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading weights is an error in these tests: every check must come first."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded before the pair was checked")

    monkeypatch.setattr(tools.models, "load_causal_lm", refuse)


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _adapter_on(model_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "down_proj"])).save_pretrained(out)
    return out


def test_different_tokenizers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A finetune whose tokenizer gives the base's tokens other ids (here two words swapped)."""
    other = _copy(tiny_model_dir, tmp_path / "other-tokenizer")
    saved = json.loads((other / "tokenizer.json").read_text())
    vocab = saved["model"]["vocab"]
    vocab["owl"], vocab["sky"] = vocab["sky"], vocab["owl"]
    (other / "tokenizer.json").write_text(json.dumps(saved))
    with pytest.raises(ModelLoadError, match="different tokenizers .*keep its base model's tokenizer"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(other)))


def test_different_architecture_or_size(tiny_model_dir: Path, tmp_path: Path) -> None:
    wider = save_tiny_model(tmp_path / "wide", hidden=64)
    with pytest.raises(ModelLoadError, match="different hidden_size \\(64 vs the base's 32\\).*trained from"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(wider)))


def test_an_adapter_made_for_another_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    wider = save_tiny_model(tmp_path / "wide", hidden=64)
    adapter = _adapter_on(wider, tmp_path / "adapter-of-wide")
    with pytest.raises(ModelLoadError, match="made for another base model: .*does not fit"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(adapter)))


def test_missing_or_corrupt_weight_files(tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path) -> None:
    missing = _copy(tiny_model_dir, tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weight files .*Download the model again"):
        load_model_pair(ModelPairSpec(base=str(missing), finetuned=str(tiny_adapter_dir)))
    corrupt = _copy(tiny_model_dir, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model_pair(ModelPairSpec(base=str(corrupt), finetuned=str(tiny_adapter_dir)))
    adapter = _copy(tiny_adapter_dir, tmp_path / "adapter-without-weights")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no adapter_model.safetensors"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(adapter)))


def test_a_hub_id_missing_from_the_cache_while_offline(tiny_adapter_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not in the local hub cache \(.+\), or only partly, "
                       "and HF_HUB_OFFLINE=1 .*HF_HUB_CACHE or HF_HOME"):
        load_model_pair(ModelPairSpec(base="nobody/no-such-model", finetuned=str(tiny_adapter_dir)))
    with pytest.raises(ModelLoadError, match=r"not in the local hub\s+cache .*HF_HUB_CACHE or HF_HOME"):
        load_model_pair(ModelPairSpec(base="nobody/no-such-model", finetuned="nobody/no-such-adapter"))


def test_a_folder_that_is_neither_model_nor_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("my finetune")
    with pytest.raises(ModelLoadError, match="neither a peft adapter .*nor a model"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tmp_path / "notes")))


def _with_prefix(adapter: Path, out: Path, prefix: str) -> Path:
    """The adapter with its module names under another prefix (as a multimodal model's language
    model is named in memory, where its checkpoint on disk names it otherwise)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, out)
    tensors = load_file(out / "adapter_model.safetensors")
    renamed = {key.replace("base_model.model.model.", f"base_model.model.{prefix}"): value
               for key, value in tensors.items()}
    save_file(renamed, out / "adapter_model.safetensors")
    return out


def test_an_adapter_named_as_in_memory_is_matched_by_its_path_within_the_blocks(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    own = _with_prefix(_adapter_on(tiny_model_dir, tmp_path / "own"), tmp_path / "own-renamed",
                       "model.language_model.")
    with pytest.raises(AssertionError, match="weights were loaded"):  # the checks passed
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(own)))
    wider = save_tiny_model(tmp_path / "wide", hidden=64)
    other = _with_prefix(_adapter_on(wider, tmp_path / "other"), tmp_path / "other-renamed",
                         "model.language_model.")
    with pytest.raises(ModelLoadError, match="made for another base model: .*does not fit"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(other)))


def _recording(adapter: Path, declared: str) -> Path:
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = declared
    config_file.write_text(json.dumps(config))
    return adapter


@pytest.mark.parametrize(("declared", "base_name", "noted"), [
    ("google/gemma-3-270m", "gemma3-270m", False),  # the offline model's hub name
    ("google/gemma-3-270m-it", "gemma3-270m", True),  # its instruct version: same shapes
    ("unsloth/Gemma-3-270M", "google/gemma-3-270m", False),  # a mirror, other case
    ("someorg/model", "LOCAL", False),  # a local copy in a folder named like the model
    ("someorg/other-model", "LOCAL", True),
    ("/a/folder/of/another/machine", "LOCAL", False),  # says nothing here
    ("", "LOCAL", False),
])
def test_an_adapter_that_records_another_base_is_noted(
    tiny_model_dir: Path, tmp_path: Path, declared: str, base_name: str, noted: bool,
) -> None:
    """Shapes cannot tell a base from its instruct version: the adapter's recorded base is
    compared by name, and a mismatch is noted (not refused: names are not proof)."""
    local_base = _copy(tiny_model_dir, tmp_path / "model")
    adapter = _recording(_adapter_on(tiny_model_dir, tmp_path / "adapter"), declared)
    base_name = str(local_base) if base_name == "LOCAL" else base_name
    note = declared_base_note(str(adapter), base_name, str(local_base), (base_name, "ft"))
    assert (note is not None) == noted
    if noted:
        assert note is not None and declared in note and "give the base it was trained on" in note


def test_an_adapter_recording_a_folder_here(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter_on(tiny_model_dir, tmp_path / "adapter")  # records tiny_model_dir
    assert declared_base_note(str(adapter), "b", str(tiny_model_dir), ("b", "ft")) is None
    other = _copy(tiny_model_dir, tmp_path / "other-base")
    assert declared_base_note(str(adapter), "b", str(other), ("b", "ft")) is not None
