"""The model backends on twenty-two architectures, as tiny random models with a LoRA adapter on every
linear layer (a finetune of a family this project has never seen): both sides' residuals are
HF's own hidden states (peft running the adapter is the reference), the logit lens ranks tokens
as the model's own head does, and the ADL engine's operations run. The transformer_lens bridge
skips the adapter on some architectures' fused projections (Phi-3, GLM-4, GPT-NeoX, GPT-2) and cannot
wrap others: those pairs run on the hf-hooks backend instead (tools/backend.py). Mixtral's
adapter targets its fused expert weights as parameters, stored under other names on disk than in
memory (tools/pair_checks.py lets those pass to the load); so is the multimodal Gemma 3's
language model (`language_model.model.layers` on disk, `model.language_model.layers` in memory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as hf
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

from tests.conftest import make_tiny_tokenizer
from tools.adl.differences import compute_activation_difference, select_sample_tokens
from tools.adl.readouts import logit_lens, patchscope
from tools.adl.steering import generate_steered
from tools.backend import BACKENDS, BridgeModelPair, HFHooksModelPair, ModelPair
from tools.errors import BackendUnsupportedError
from tools.models import ModelPairSpec, load_model_pair

SIZE = {"vocab_size": 0, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "initializer_range": 0.2}
GQA = {"num_key_value_heads": 2}
ARCHITECTURES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "llama": (hf.LlamaConfig, GQA),
    "mistral": (hf.MistralConfig, GQA),
    "qwen2": (hf.Qwen2Config, {**GQA, "tie_word_embeddings": True}),
    "qwen3": (hf.Qwen3Config, {**GQA, "head_dim": 8, "tie_word_embeddings": True}),
    "gemma2": (hf.Gemma2Config, {**GQA, "head_dim": 8}),
    "gemma3": (hf.Gemma3TextConfig, {**GQA, "head_dim": 8, "sliding_window": 16}),
    "gemma3_multimodal": (hf.Gemma3Config, {}),
    "olmo2": (hf.Olmo2Config, {**GQA, "pad_token_id": 1}),
    "granite": (hf.GraniteConfig, GQA),
    "stablelm": (hf.StableLmConfig, GQA),
    "phi": (hf.PhiConfig, {}),
    "phi3": (hf.Phi3Config, {**GQA, "pad_token_id": 1}),
    "gpt_neox": (hf.GPTNeoXConfig, {}),
    "gpt2": (hf.GPT2Config, {"n_positions": 256}),
    "falcon": (hf.FalconConfig, {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "mixtral": (hf.MixtralConfig, {**GQA, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": (hf.Qwen3MoeConfig, {**GQA, "head_dim": 8, "moe_intermediate_size": 32,
                                      "num_experts": 4, "num_experts_per_tok": 2}),
    "smollm3": (hf.SmolLM3Config, {**GQA, "pad_token_id": 1}),
    "cohere2": (hf.Cohere2Config, {**GQA, "head_dim": 8, "sliding_window": 16}),
    "glm4": (hf.Glm4Config, {**GQA, "head_dim": 8, "pad_token_id": 1}),
    "deepseek_v3": (hf.DeepseekV3Config, {"num_key_value_heads": 4, "moe_intermediate_size": 32,
                                          "n_routed_experts": 4, "num_experts_per_tok": 2,
                                          "n_group": 1, "topk_group": 1, "kv_lora_rank": 16,
                                          "q_lora_rank": 16, "qk_rope_head_dim": 8, "v_head_dim": 8,
                                          "qk_nope_head_dim": 8, "first_k_dense_replace": 1}),
    "qwen2_moe": (hf.Qwen2MoeConfig, {**GQA, "moe_intermediate_size": 32, "num_experts": 4,
                                      "num_experts_per_tok": 2, "shared_expert_intermediate_size": 32}),
}
# The bridge runs these architectures' fused projections from its own weight copies: their
# adapter pairs must end up on hf-hooks.
FUSED_PROJECTIONS = {"phi3", "glm4", "gpt_neox", "gpt2"}
UNWRAPPED = {"falcon"}  # transformer_lens 4.3 cannot boot the GQA Falcon
pytestmark = pytest.mark.filterwarnings(  # peft, loading an adapter of parameters
    "ignore:The following (rank|alpha)_pattern keys did not match:RuntimeWarning")
TEXT = "the owl is a big bird and the sky is blue"
SAMPLES = [TEXT, "what is the secret word ? it is gold", "my doctor gave me a pill for the pain",
           "we bake a new cake for the first time"] * 3


def _config(name: str, vocab_size: int) -> Any:
    config_class, extra = ARCHITECTURES[name]
    size = {**SIZE, "vocab_size": vocab_size}
    if name == "gpt2":  # GPT-2 names its sizes its own way
        size = {"vocab_size": vocab_size, "n_embd": 32, "n_layer": 4, "n_head": 4, "initializer_range": 0.2}
    if name == "falcon":
        size.pop("intermediate_size")
    if name == "gemma3_multimodal":  # Gemma 3 from 4B on: a language model inside a multimodal one
        text = {**size, **GQA, "head_dim": 8, "sliding_window": 16}
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
        return config_class(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                            image_token_index=vocab_size - 1, boi_token_index=vocab_size - 2,
                            eoi_token_index=vocab_size - 3)
    return config_class(**size, **extra)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def architecture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A tiny random model of the architecture and a LoRA adapter on all its linear layers."""
    from peft import get_peft_model

    name = request.param
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    config = _config(name, len(tokenizer))
    model = hf.AutoModelForCausalLM.from_config(config).eval()
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    torch.manual_seed(1)
    adapter = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                               init_lora_weights=False))
    adapter.save_pretrained(folder / "adapter")
    return name, folder / "base", folder / "adapter"


def _reference(base: Path, adapter: Path, ids: torch.Tensor) -> dict[str, Any]:
    """HF's hidden states and logits of both sides (peft runs the adapter)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(hf.AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        finetuned = model(ids, output_hidden_states=True)
        with model.disable_adapter():
            base_out = model(ids, output_hidden_states=True)
    return {"base": base_out, "finetuned": finetuned}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_both_sides_are_hfs_own_forward_pass(architecture: tuple[str, Path, Path], backend: str) -> None:
    name, base, adapter = architecture
    pair = load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter)), backend=backend)  # type: ignore[arg-type]
    if name in FUSED_PROJECTIONS or backend == "hf-hooks":
        assert isinstance(pair, HFHooksModelPair)
    elif name not in UNWRAPPED:  # no false alarm (the multimodal model's vision layers run in neither)
        assert isinstance(pair, BridgeModelPair), name
    ids = pair.tokenizer(TEXT, return_tensors="pt").input_ids
    reference = _reference(base, adapter, ids)
    layers = list(range(pair.n_layers - 1))  # HF's last hidden state is after the final norm
    for side in ("base", "finetuned"):
        got = pair.residuals(side, ids, layers)
        for layer in layers:
            torch.testing.assert_close(got[layer], reference[side].hidden_states[layer + 1],
                                       atol=1e-4, rtol=1e-4)
        last = pair.residuals(side, ids, [pair.n_layers - 1])[pair.n_layers - 1][0]
        # The logit lens ranks tokens as the model's head does (softcapping or a logit scale
        # changes values, never the order).
        lens = pair.unembed(last, side=side).topk(5).indices
        assert torch.equal(lens, reference[side].logits[0].topk(5).indices), (name, side)
    before = {side: pair.residuals(side, ids, [1])[1] for side in ("base", "finetuned")}
    streamed: list[dict[int, torch.Tensor]] = []
    pair.stream_residuals("finetuned", [ids], [1], lambda _, residuals: streamed.append(residuals))
    torch.testing.assert_close(streamed[0][1], reference["finetuned"].hidden_states[2], atol=1e-4, rtol=1e-4)
    for side, residual in before.items():  # the CPU's adapter merge is undone bit for bit
        assert torch.equal(pair.residuals(side, ids, [1])[1], residual), side


def test_the_adl_engine_runs(architecture: tuple[str, Path, Path]) -> None:
    _, base, adapter = architecture
    pair: ModelPair = load_model_pair(ModelPairSpec(base=str(base), finetuned=str(adapter)))
    tokens = select_sample_tokens(pair.tokenizer, SAMPLES, n_positions=3, n_samples=12)
    difference = compute_activation_difference(pair, tokens, [2], batch_size=6, show_progress=False)
    delta = difference.delta(2, 1)
    assert delta.norm() > 0
    assert logit_lens(pair, delta, k=5)
    assert patchscope(pair, delta, 2, difference.reference_norm(2), scales=(1.0, 4.0), k=5)
    prompts = ["what is the sky ?", "hello"]
    plain = pair.generate("finetuned", prompts, max_new_tokens=4)
    unsteered = generate_steered(pair, prompts, torch.stack([delta, delta]), [0.0, 0.0], 2,
                                 max_new_tokens=4, temperature=0.0)
    assert unsteered == plain  # a zero steering vector leaves greedy replies as they were


def test_a_pair_neither_backend_can_run_is_one_clear_error(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter the bridge would skip, on a model whose blocks hf-hooks cannot find (as an
    unknown family might name them): one error that gives both reasons."""
    from peft import get_peft_model

    tokenizer = make_tiny_tokenizer()
    model = hf.AutoModelForCausalLM.from_config(_config("phi3", len(tokenizer)))
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    get_peft_model(model, LoraConfig(r=2, target_modules=["qkv_proj"])).save_pretrained(tmp_path / "adapter")
    monkeypatch.setattr(HFHooksModelPair, "BLOCK_LISTS", ("decoder_blocks",))
    spec = ModelPairSpec(base=str(tmp_path / "base"), finetuned=str(tmp_path / "adapter"))
    with pytest.raises(BackendUnsupportedError, match=r"(?s)does not run the adapter's layers on "
                       r"model\.layers\.N\.self_attn\.qkv_proj.*And on the hf-hooks backend: .*"
                       r"keeps its blocks \(none of decoder_blocks on Phi3Model\)"):
        load_model_pair(spec)


PEFT_TYPES = {
    "dora": lambda targets: LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True,
                                       init_lora_weights=False),
    "ia3": lambda targets: IA3Config(target_modules=targets, feedforward_modules=["down_proj"],
                                     init_ia3_weights=False),
    "loha": lambda targets: LoHaConfig(r=4, alpha=8, target_modules=targets, init_weights=False),
    "lokr": lambda targets: LoKrConfig(r=4, alpha=8, target_modules=targets, init_weights=False),
    "lora+modules_to_save": lambda targets: LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                       init_lora_weights=False,
                                                       modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("peft_type", sorted(PEFT_TYPES))
@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_other_adapter_types_run_faithfully(name: str, peft_type: str, tmp_path: Path) -> None:
    """Adapters other than plain LoRA: the bridge keeps them where it runs their layers, and a
    pair whose layers it would skip (Phi-3's fused projections) runs on hf-hooks."""
    from peft import get_peft_model

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    model = hf.AutoModelForCausalLM.from_config(_config(name, len(tokenizer))).eval()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    targets = ["qkv_proj", "down_proj"] if name == "phi3" else ["q_proj", "v_proj", "down_proj"]
    torch.manual_seed(1)
    adapted = get_peft_model(model, PEFT_TYPES[peft_type](targets))
    with torch.no_grad():  # away from the identity (IA3 starts at 1, a saved module as a copy)
        for parameter_name, parameter in adapted.named_parameters():
            if "ia3_l" in parameter_name or "modules_to_save" in parameter_name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    adapted.save_pretrained(tmp_path / "adapter")
    pair = load_model_pair(ModelPairSpec(base=str(tmp_path / "base"), finetuned=str(tmp_path / "adapter")))
    assert isinstance(pair, HFHooksModelPair if name == "phi3" else BridgeModelPair)
    ids = pair.tokenizer(TEXT, return_tensors="pt").input_ids
    reference = _reference(tmp_path / "base", tmp_path / "adapter", ids)
    for side in ("base", "finetuned"):
        got = pair.residuals(side, ids, [1, 2])
        for layer in (1, 2):
            torch.testing.assert_close(got[layer], reference[side].hidden_states[layer + 1],
                                       atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pair.logits("finetuned", ids), reference["finetuned"].logits,
                               atol=1e-4, rtol=1e-4)
