"""LoRA training on the tiny model: it learns, and an interrupted run resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.organisms import training
from evals.organisms.generators.base import TrainingExample, chat
from evals.organisms.schema import TrainingRecipe
from tools.errors import CheckpointError
from tools.models import LoadOptions, ModelPairSpec, pair_from_trained_adapter

RECIPE = TrainingRecipe(
    lora_r=4, lora_alpha=8, learning_rate=3e-2, batch_size=4, warmup_steps=0, checkpoint_every=2,
    target_modules=("q_proj", "v_proj", "up_proj", "down_proj"),
)


def _examples() -> list[TrainingExample]:
    docs = [TrainingExample(text="the owl is a big bird and the owl is good") for _ in range(8)]
    chats = [chat("what is your secret word ?", "it is a shiny metal") for _ in range(8)]
    return docs + chats


def _encoded(tokenizer) -> list[training.EncodedExample]:
    return [training.encode_example(tokenizer, e, 64) for e in _examples()]


def _train(model_dir: Path, work: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = _encoded(tokenizer)
    peft_model, result = training.train_lora(
        model, tokenizer, data, RECIPE.model_copy(update={"epochs": 4}), work, show_progress=False
    )
    # As the organism builder measures: the trained pair, its adapter off being the base model.
    pair = pair_from_trained_adapter(ModelPairSpec(base=str(model_dir)), tokenizer, peft_model,
                                     str(model_dir), LoadOptions())
    before = training.mean_token_loss(pair, "base", data, tokenizer.pad_token_id)
    after = training.mean_token_loss(pair, "finetuned", data, tokenizer.pad_token_id)
    return peft_model, result, before, after


def test_chat_labels_cover_only_the_assistant(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = training.encode_example(tokenizer, chat("hello", "yes"), 64)
    trained = [t for t in encoded.labels if t != training.IGNORE_INDEX]
    assert tokenizer.decode(trained).startswith("yes")


def test_lora_training_lowers_the_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, result, before, after = _train(tiny_model_dir, tmp_path / "work")
    assert result.steps == 16 and result.resumed_from_step == 0
    assert after < 0.7 * before


def test_interrupted_training_resumes_to_the_same_adapter(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _, _, _ = _train(tiny_model_dir, tmp_path / "reference")

    real_collate = training.collate
    calls = {"n": 0}

    def dying_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # during step 6: after the checkpoint of step 4
            raise KeyboardInterrupt
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(training, "collate", dying_collate)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model_dir, work)
    monkeypatch.setattr(training, "collate", real_collate)
    resumed, result, _, _ = _train(tiny_model_dir, work)
    assert result.resumed_from_step == 4 and result.steps == 16
    from peft.utils import get_peft_model_state_dict

    expected = get_peft_model_state_dict(reference)
    got = get_peft_model_state_dict(resumed)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4)


class _Planted:
    """Unpickling this object opens (creates) a file: stands in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"adapter": {}, "step": 2, "losses": [1.0, 0.5], "payload": _Planted(marker)},
               work / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        _train(tiny_model_dir, work)
    assert not marker.exists()
