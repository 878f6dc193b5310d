"""The model backend's invariants, run against every implementation (`tools.backend.BACKENDS`).

- Residuals are HF's own hidden states (a plain HF model, loaded outside any backend, is the
  reference), and both implementations agree on every operation.
- Generation after any operation equals generation before it: booting a transformer_lens bridge
  wraps the HF model's modules in place, and a hook or an adapter merge that outlived its call
  would change every later reply (the gibberish-generation bug that the transformers pin guards).
- Hooks are scoped to a call; a second thread inside an operation is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tools.backend import BACKENDS, ModelPair, Steering
from tools.errors import AdlInputError, ConcurrentModelUseError
from tools.models import ModelPairSpec, load_model_pair

PROMPT = "the owl is a big bird and the sky is blue"
CHAT = ["what is the sky ?", "hello"]


@pytest.fixture(params=sorted(BACKENDS))
def adapter_pair(request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_adapter_dir: Path) -> ModelPair:
    return load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)),
                           backend=request.param)


def _ids(pair: ModelPair) -> torch.Tensor:
    return pair.tokenizer(PROMPT, return_tensors="pt").input_ids


def test_residuals_equal_hf_hidden_states(adapter_pair: ModelPair, tiny_model_dir: Path,
                                          tiny_adapter_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = _ids(adapter_pair)
    layers = list(range(adapter_pair.n_layers - 1))  # HF's last hidden state is after the final norm
    with torch.no_grad():
        base_states = plain(ids, output_hidden_states=True).hidden_states
        finetuned = PeftModel.from_pretrained(plain, tiny_adapter_dir).eval()
        ft_states = finetuned(ids, output_hidden_states=True).hidden_states
    for side, states in (("base", base_states), ("finetuned", ft_states)):
        got = adapter_pair.residuals(side, ids, layers)
        for layer in layers:
            torch.testing.assert_close(got[layer], states[layer + 1], atol=1e-5, rtol=1e-5)
    streamed: list[dict[int, torch.Tensor]] = []
    adapter_pair.stream_residuals("finetuned", [ids, ids], layers, lambda _, r: streamed.append(r))
    assert len(streamed) == 2
    for residuals in streamed:  # the merged-adapter bulk path reads the same residuals
        torch.testing.assert_close(residuals[layers[-1]], ft_states[layers[-1] + 1], atol=1e-5, rtol=1e-5)


def test_generation_equals_plain_hf_generation(adapter_pair: ModelPair, tiny_model_dir: Path,
                                               tiny_adapter_dir: Path) -> None:
    """Greedy replies equal those of a plain HF model loaded outside any backend. This guards the
    transformers pin: after a bridge boot, transformers >= 5.24's renamed KV-cache argument was
    not read by the 4.3 bridge, and every cached decoding step attended only to itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tools.chat import decode_replies, encode_prompts, stop_token_ids

    tokenizer = adapter_pair.tokenizer
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    finetuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                          tiny_adapter_dir).eval()
    encoded = encode_prompts(tokenizer, CHAT)
    for side, model in (("base", plain), ("finetuned", finetuned)):
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=12, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=stop_token_ids(tokenizer))
        expected = decode_replies(tokenizer, output[:, encoded["input_ids"].shape[1] :])
        assert adapter_pair.generate(side, CHAT, max_new_tokens=12) == expected, side


@pytest.mark.parametrize("side", ["base", "finetuned"])
def test_patching_a_residual_with_itself_changes_no_logit(adapter_pair: ModelPair, side: str) -> None:
    """Patchscope's pass: at every position (the last included, where the shared prompt's prefix
    runs once from a KV cache), replacing the residual with its own value gives the plain logits,
    and a different replacement per row gives each row its own logits."""
    ids = _ids(adapter_pair)
    plain = adapter_pair.logits(side, ids)[0]
    for layer in (0, 2):
        resid = adapter_pair.residuals(side, ids, [layer])[layer][0]
        for position in range(ids.shape[1]):
            own = resid[position].expand(2, -1)
            patched = adapter_pair.patched_logits(side, ids.expand(2, -1), layer, position, own)
            torch.testing.assert_close(patched, plain[position].expand(2, -1), atol=1e-4, rtol=1e-4)
    other = torch.stack([resid[-1], resid[-1] * 4])
    rows = adapter_pair.patched_logits(side, ids.expand(2, -1), 2, ids.shape[1] - 1, other)
    alone = adapter_pair.patched_logits(side, ids, 2, ids.shape[1] - 1, other[1:])
    torch.testing.assert_close(rows[1:], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rows[0], rows[1], atol=1e-3)


def test_backends_agree(tiny_model_dir: Path, tiny_adapter_dir: Path) -> None:
    spec = ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir))
    pairs = [load_model_pair(spec, backend=name) for name in sorted(BACKENDS)]
    ids = _ids(pairs[0])
    vectors = torch.randn(3, pairs[0].d_model, generator=torch.Generator().manual_seed(0))
    results = []
    for pair in pairs:
        results.append({
            "resid": pair.residuals("finetuned", ids, [0, 2])[2],
            "logits": pair.logits("base", ids),
            "patched": pair.patched_logits("finetuned", ids.expand(3, -1), 1, 3, vectors),
            "unembed": pair.unembed(vectors, "finetuned"),
            "steered": pair.generate("finetuned", CHAT + ["why ?"], max_new_tokens=8,
                                     steering=Steering(1, vectors * 5)),
        })
    first, second = results
    for key in ("resid", "logits", "patched", "unembed"):
        torch.testing.assert_close(first[key], second[key], atol=1e-4, rtol=1e-4)
    assert first["steered"] == second["steered"]


OPERATIONS: dict[str, Callable[[ModelPair], object]] = {
    "residuals": lambda pair: pair.residuals("finetuned", _ids(pair), [1]),
    "stream_residuals": lambda pair: pair.stream_residuals(
        "finetuned", [_ids(pair)], [0, 1], lambda batch, residuals: None),
    "logits": lambda pair: pair.logits("base", _ids(pair)),
    "patched_logits": lambda pair: pair.patched_logits(
        "finetuned", _ids(pair), 1, 2, torch.full((1, pair.d_model), 3.0)),
    "unembed": lambda pair: pair.unembed(torch.ones(2, pair.d_model)),
    "steered generation": lambda pair: pair.generate(
        "finetuned", CHAT, max_new_tokens=6, temperature=1.0,
        steering=Steering(1, torch.full((2, pair.d_model), 50.0))),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_generation_after_any_operation_equals_generation_before(
    adapter_pair: ModelPair, operation: str
) -> None:
    before = {side: adapter_pair.generate(side, CHAT, max_new_tokens=12) for side in ("base", "finetuned")}
    reference_logits = adapter_pair.logits("finetuned", _ids(adapter_pair))
    OPERATIONS[operation](adapter_pair)
    after = {side: adapter_pair.generate(side, CHAT, max_new_tokens=12) for side in ("base", "finetuned")}
    assert after == before
    torch.testing.assert_close(adapter_pair.logits("finetuned", _ids(adapter_pair)), reference_logits,
                               atol=1e-6, rtol=1e-6)
    zero = Steering(1, torch.zeros(len(CHAT), adapter_pair.d_model))
    assert adapter_pair.generate("finetuned", CHAT, max_new_tokens=12, steering=zero) == before["finetuned"]


def test_steering_changes_generation_only_inside_the_call(adapter_pair: ModelPair) -> None:
    plain = adapter_pair.generate("finetuned", CHAT, max_new_tokens=8)
    strong = Steering(1, torch.full((2, adapter_pair.d_model), 50.0))
    assert adapter_pair.generate("finetuned", CHAT, max_new_tokens=8, steering=strong) != plain
    assert adapter_pair.generate("finetuned", CHAT, max_new_tokens=8) == plain


def test_bad_arguments_are_typed_errors(adapter_pair: ModelPair) -> None:
    ids = _ids(adapter_pair)
    with pytest.raises(AdlInputError, match="out of range"):
        adapter_pair.residuals("base", ids, [adapter_pair.n_layers])
    with pytest.raises(AdlInputError, match="side"):
        adapter_pair.logits("other", ids)  # type: ignore[arg-type]
    with pytest.raises(AdlInputError, match="one vector per prompt"):
        adapter_pair.generate("finetuned", CHAT, steering=Steering(1, torch.zeros(1, adapter_pair.d_model)))


def test_a_second_thread_inside_an_operation_is_refused(adapter_pair: ModelPair) -> None:
    ids = _ids(adapter_pair)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            adapter_pair.residuals("base", ids, [0])
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    def consume(batch: torch.Tensor, residuals: dict[int, torch.Tensor]) -> None:
        thread = threading.Thread(target=other)  # a second thread while the first is inside
        thread.start()
        thread.join()
        other()  # and the consumer itself calling back into the pair

    adapter_pair.stream_residuals("finetuned", [ids], [0], consume)
    assert [type(e) for e in errors] == [ConcurrentModelUseError, ConcurrentModelUseError]
    assert "another thread" in str(errors[0]) and "inside one of its own operations" in str(errors[1])
    adapter_pair.residuals("base", ids, [0])  # free again once the operation ended
