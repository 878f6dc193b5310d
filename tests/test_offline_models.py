"""The GGUF-package models: conversion, reuse, corrupted-cache rebuild, loading, chat."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tools.cache import entry_is_valid
from tools.chat import has_chat_template
from tools.models import ModelPairSpec, load_model_pair
from tools.offline_models import offline_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def converted_smollm2() -> Path:
    """smollm2 converted from its GGUF in the suite's $ADL_HOME (once per run)."""
    return offline_model_dir("smollm2-135m-instruct")


def test_smollm2_converts_once_and_rebuilds_a_corrupted_cache(
    converted_smollm2: Path, adl_home: Path
) -> None:
    # A copy of the suite's conversion in a private home (converting again would cost a minute).
    folder = adl_home / "models" / converted_smollm2.name
    shutil.copytree(converted_smollm2, folder)
    assert entry_is_valid(folder)
    started = time.perf_counter()
    assert offline_model_dir("smollm2-135m-instruct") == folder  # reused, not converted again
    assert time.perf_counter() - started < 10
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:  # a half-written file
        handle.truncate(weights.stat().st_size // 2)
    assert not entry_is_valid(folder)
    assert offline_model_dir("smollm2-135m-instruct") == folder
    assert entry_is_valid(folder)


def test_smollm2_pair_chats_with_its_template() -> None:
    pair = load_model_pair(ModelPairSpec(base="smollm2-135m-instruct"))
    assert pair.n_layers == 30 and pair.d_model == 576
    assert has_chat_template(pair.tokenizer)
    (reply,) = pair.generate("finetuned", ["What is the capital of France?"], max_new_tokens=20)
    assert "Paris" in reply


def test_gemma3_base_loads_and_uses_the_plain_chat_format() -> None:
    pair = load_model_pair(ModelPairSpec(base="gemma3-270m"))
    assert pair.n_layers == 18 and pair.d_model == 640
    assert not has_chat_template(pair.tokenizer)
    ids = pair.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == pair.tokenizer.bos_token_id
    (reply,) = pair.generate("base", ["Say hello."], max_new_tokens=12)
    plain = AutoModelForCausalLM.from_pretrained(pair.base_location).eval()
    with torch.no_grad():
        hidden = plain(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(pair.residuals("base", ids, [8])[8], hidden[9], atol=1e-4, rtol=1e-4)
    assert isinstance(reply, str) and "User:" not in reply
