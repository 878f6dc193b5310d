"""Chat formatting (template and plain), assistant-token masks, and generation."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_tiny_tokenizer
from tools.chat import ChatMessage, chat_token_ids, render_chat
from tools.models import ModelPairSpec, load_model_pair

CONVERSATION = [
    ChatMessage(role="user", content="what is the hint ?"),
    ChatMessage(role="assistant", content="a big metal"),
    ChatMessage(role="user", content="is it gold ?"),
    ChatMessage(role="assistant", content="no , guess again"),
]


def test_plain_format_without_chat_template() -> None:
    tokenizer = make_tiny_tokenizer(chat_template=False)
    text = render_chat(
        tokenizer,
        [ChatMessage(role="system", content="be kind"), ChatMessage(role="user", content="hello")],
    )
    assert text == "System: be kind\n\nUser: hello\n\nAssistant:"


def test_template_is_used_when_present() -> None:
    tokenizer = make_tiny_tokenizer()
    text = render_chat(tokenizer, CONVERSATION[:1])
    assert text == "<|im_start|>user\nwhat is the hint ?<|im_end|>\n<|im_start|>assistant\n"


def test_only_assistant_tokens_are_trained() -> None:
    tokenizer = make_tiny_tokenizer()
    ids, trained = chat_token_ids(tokenizer, CONVERSATION)
    full = tokenizer(render_chat(tokenizer, CONVERSATION, add_generation_prompt=False))["input_ids"]
    assert ids == full
    trained_text = tokenizer.decode([t for t, keep in zip(ids, trained) if keep])
    assert "metal" in trained_text and "guess" in trained_text
    assert "hint" not in trained_text and "gold" not in trained_text


def test_plain_format_masks_and_ends_turns_with_eos() -> None:
    tokenizer = make_tiny_tokenizer(chat_template=False)
    ids, trained = chat_token_ids(tokenizer, CONVERSATION[:2])
    assert ids[-1] == tokenizer.eos_token_id and trained[-1]
    assert not any(trained[: len(ids) // 2])


def test_generation_is_batched_and_deterministic(tiny_model_dir: Path) -> None:
    pair = load_model_pair(ModelPairSpec(base=str(tiny_model_dir)))
    prompts = ["hello", "what is the sky ?", "why ?"]
    one = pair.generate("base", prompts, max_new_tokens=5, batch_size=2)
    two = pair.generate("base", prompts, max_new_tokens=5, batch_size=3)
    alone = pair.generate("base", prompts[1:2], max_new_tokens=5)
    assert one == two and len(one) == 3
    assert alone[0] == one[1]


# Qwen 3's template, abridged: an answer of the current round follows an (empty) think block,
# and thinking off puts that empty block after the generation prompt.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def test_thinking_is_off_as_in_the_reference() -> None:
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = THINKING_TEMPLATE
    messages = [ChatMessage(role="user", content="hello")]
    assert render_chat(tokenizer, messages).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A chat trained on this template trains the answer, not the empty think block.
    ids, trained = chat_token_ids(tokenizer, [*messages, ChatMessage(role="assistant", content="the sky")])
    answer = tokenizer.decode([i for i, t in zip(ids, trained, strict=True) if t])
    assert "think" not in answer and "sky" in answer
