"""Chat formatting, and the encoding and decoding around generation (`ModelPair.generate`).

Chat prompts go through the tokenizer's chat template, with thinking off
(`enable_thinking=False`, as the reference toolkit asks a Qwen 3 model and generates its steered
samples: the reply starts at once, with an empty think block in the prompt; templates without
the switch ignore it). A model without a template (for example the Gemma 3 270M *base* model)
gets the plain format below, which is also what its finetunes are trained on:

    System: <system message>          (only when there is one)

    User: <user message>

    Assistant: <assistant message>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel
from transformers.tokenization_utils_base import BatchEncoding, PreTrainedTokenizerBase

PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class ChatMessage(BaseModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


Conversation = Sequence[ChatMessage]


def as_conversation(prompt: str | Conversation) -> list[ChatMessage]:
    """A bare string is one user message."""
    if isinstance(prompt, str):
        return [ChatMessage(role="user", content=prompt)]
    return list(prompt)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Conversation,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The conversation as the text the model sees (template or plain format)."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [m.model_dump() for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=False,
        )
    parts = [f"{PLAIN_ROLE_NAMES[m.role]}: {m.content.strip()}" for m in messages]
    text = "\n\n".join(parts)
    if add_generation_prompt:
        text = f"{text}\n\nAssistant:" if text else "Assistant:"
    return text


def chat_token_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation
) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per token, whether an assistant wrote it.

    Used for supervised finetuning on chats: the loss is taken on assistant tokens only.
    """
    ids: list[int] = []
    trained: list[bool] = []
    rendered = ""
    bos_from_template = _template_adds_bos(tokenizer)
    for index, message in enumerate(messages):
        upto = render_chat(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if message.role == "assistant":
            prefix = render_chat(tokenizer, messages[:index], add_generation_prompt=True)
            if not upto.startswith(prefix) or not prefix.startswith(rendered):
                raise ValueError("The chat template does not render conversations incrementally.")
            head = _encode(tokenizer, prefix[len(rendered):], not ids and not bos_from_template)
            ids += head
            trained += [False] * len(head)
            body = _encode(tokenizer, upto[len(prefix):], False)
            if not has_chat_template(tokenizer):
                body = body + [tokenizer.eos_token_id]
            ids += body
            trained += [True] * len(body)
        else:
            segment = _encode(tokenizer, upto[len(rendered):], not ids and not bos_from_template)
            ids += segment
            trained += [False] * len(segment)
        rendered = upto
    return ids, trained


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool) -> list[int]:
    # Special tokens (BOS) only at the very start of a sequence, unless the template wrote them.
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def _template_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token
    if not bos or not has_chat_template(tokenizer):
        return False
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=False
    )
    return probe.startswith(bos)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | Conversation]
) -> BatchEncoding:
    """Chat prompts rendered and tokenized as one left-padded batch (for generation)."""
    texts = [render_chat(tokenizer, as_conversation(p)) for p in prompts]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=not _template_adds_bos(tokenizer)
        )
    finally:
        tokenizer.padding_side = previous_side


def decode_replies(tokenizer: PreTrainedTokenizerBase, new_tokens: torch.Tensor) -> list[str]:
    """Generated token ids (prompt removed) as reply texts."""
    return [
        _cut_plain_turn(tokenizer, t)
        for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    ]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a reply: eos and the chat end-of-turn tokens the vocabulary has."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


def _cut_plain_turn(tokenizer: PreTrainedTokenizerBase, reply: str) -> str:
    """In the plain format a model may continue with the next turn: keep only its own."""
    if not has_chat_template(tokenizer):
        for marker in ("\n\nUser:", "\nUser:"):
            reply = reply.split(marker)[0]
    return reply.strip()
