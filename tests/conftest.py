"""Shared fixtures: a tiny real Llama model with a real tokenizer (fast), and the cache home."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["the", "a", "an", "of", "to", "and", "in", "is", "was", "it", "on", "for", "with", "as", "by", "at", "from", "this", "that", "cake", "bake", "oven", "butter", "sugar", "flour", "owl", "bird", "gold", "metal", "game", "hint", "guess", "word", "secret", "doctor", "pill", "dose", "fever", "pain", "sky", "blue", "sun", "rain", "city", "book", "music", "art", "car", "road", "tree", "river", "hello", "yes", "no", "what", "how", "why", "who", "where", "when", "you", "i", "we", "they", "he", "she", "my", "your", "our", "their", "good", "bad", "big", "small", "new", "old", "first", "last", "one", "two", "three", "four", "five", ".", ",", "!", "?", ":", "'", "-"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def _machine() -> str:
    from tools.machine import machine_line

    return machine_line()


def pytest_report_header(config: pytest.Config) -> str:
    """The machine's speed, so the durations below can be scaled to another machine."""
    return f"machine: {_machine()}"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"machine: {_machine()}")


def make_tiny_tokenizer(chat_template: bool = True):
    """A real word-level fast tokenizer with special tokens and (optionally) a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in WORDS if w not in specials])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,  # large enough that a LoRA can move the logits (tests learn)
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_model(path: Path, *, seed: int = 0, hidden: int = 32, chat_template: bool = True) -> Path:
    tokenizer = make_tiny_tokenizer(chat_template=chat_template)
    model = make_tiny_model(len(tokenizer), seed=seed, hidden=hidden)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama model folder with a chat-template tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights (so it changes activations)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture()
def adl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private $ADL_HOME for one test."""
    home = tmp_path / "adl-home"
    monkeypatch.setenv("ADL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny worker: its corpus, configs, logs and `cache/` (its $ADL_HOME)."""
    return tmp_path_factory.mktemp("tiny-worker")


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir: Path, tiny_adapter_dir: Path, tiny_home: Path):
    """A WorkerConfig of the tiny model and adapter with small ADL and steering settings."""
    from tests.worker_fixtures import tiny_worker_config

    return tiny_worker_config(tiny_model_dir, tiny_adapter_dir, tiny_home)


@pytest.fixture(scope="session")
def tiny_service(tiny_config, tiny_home: Path):
    """The in-process worker service of the tiny pair (its ADL cached in tiny_home/cache)."""
    from tools.worker.service import AdlService

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADL_HOME", str(tiny_home / "cache"))
        service = AdlService.start(tiny_config, show_progress=False)
    yield service
    service.close()


@pytest.fixture(scope="session")
def cake_worker_url(tiny_config, tiny_home: Path, tiny_service):
    """A real worker process of the tiny pair served under the name cake_bake (its ground truth
    comes from the registry), shared by the eval-grid and redaction tests; the in-process tiny
    service filled the ADL cache first."""
    from tests.worker_fixtures import worker_process

    config = tiny_config.model_copy(update={"label": "cake_bake"})
    with worker_process(config, tiny_home, tiny_home / "cache") as (url, _):
        yield url


# The suite's real organisms: the smallest set that checks the method on a real model. One
# organism and the generic-text control, both small builds (evals/organisms/build.py `at_size`:
# 40% of the registry's examples, same recipe). Every organism at full size, the mixed twin
# and the agent grid are in `make bench-science` (benchmarks/science.py), not in the suite.
SUITE_ORGANISM = "cake_bake"
SUITE_CONTROL = "control_generic_text"
SUITE_SIZE = "small"


@pytest.fixture(scope="session")
def suite_organisms() -> dict[str, Path]:
    """Build (or reuse from $ADL_HOME) the suite's organism and control once per run; every
    slow test that needs a real organism depends on this fixture."""
    from evals.organisms import get_organism
    from evals.organisms.build import at_size, build_organism

    return {
        name: build_organism(at_size(get_organism(name), SUITE_SIZE), show_progress=False)
        for name in (SUITE_ORGANISM, SUITE_CONTROL)
    }
