"""Coherence graders: is a generated answer still fluent text?

One interface, `CoherenceGrader.grade(prompts, samples) -> list[bool]`. The offline grader
judges with the *base* model: an answer is coherent when its mean token negative log-likelihood
given the prompt stays below a threshold, it does not repeat itself (neither its words nor its
tokens), it is not made of a handful of words, and it says something.
Calibrated on smollm2-135m-instruct so that ordinary sampled answers pass and heavily steered
gibberish fails (tests/test_adl_steering.py; on the offline organisms 96-98% of unsteered
samples pass at temperature 1 and all greedy ones, 4-44% at strength 0.3, at most 8% from 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from pydantic import BaseModel, Field

from tools.backend import ModelPair
from tools.chat import ChatMessage, render_chat


class CoherenceGrader(Protocol):
    """Judges steered samples. Its type, `name` and `settings` identify it in the steering cache
    key (tools.adl.pipeline.steering_key): two graders that may judge differently must differ in
    one of them."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> BaseModel | None:
        """Everything besides the type that decides its verdicts (None: nothing)."""
        ...

    def grade(self, prompts: Sequence[str], samples: Sequence[str]) -> list[bool]:
        """One verdict per sample (True: coherent)."""
        ...


DISTINCT_WORDS_WINDOW = 100  # about the search's 128 tokens


class OfflineCoherenceSettings(BaseModel):
    max_mean_nll: float = Field(
        5.0, gt=0, description="Mean NLL per token under the base model (smollm2-135m: "
        "unsteered samples at temperature 1 have p90 4.3-4.6, samples steered at strength 0.5 "
        "have p10 3.1-5.8 and mostly fail the repetition check instead)."
    )
    max_repeated_trigrams: float = Field(0.3, ge=0, le=1, description="Share of word 3-grams "
                                         "seen before in the answer.")
    max_repeated_token_trigrams: float = Field(
        0.3, ge=0, le=1, description="The same limit on the base tokenizer's tokens: loops of "
        "non-word tokens (runs of non-breaking spaces between scattered words) that whitespace-"
        "split words miss and the base model predicts well. Added after an H200 run whose search "
        "accepted such text at strength 164 (BENCHMARKS.md, 'GPU benchmark'); ordinary 512-token "
        "samples there stayed at or below 0.21, that text at or above 0.49.")
    min_distinct_words: float = Field(
        0.4, ge=0, le=1, description="Share of distinct words (lower-cased) among the first "
        f"{DISTINCT_WORDS_WINDOW}: function-word soup ('or to that the, that or to ...') that the "
        "base model predicts well and whose 3-grams seldom repeat exactly. Added after an H200 "
        "run whose search accepted such text at strengths 1.4-164 (BENCHMARKS.md, 'GPU "
        "benchmark'): there its median was 0.23-0.42; unsteered samples of four organisms had "
        "at least 0.40 (5th percentile 0.67), so the limit sits at their lowest.")
    min_words: int = Field(3, ge=0)


def distinct_word_share(text: str, window: int = DISTINCT_WORDS_WINDOW) -> float:
    """Share of distinct words (lower-cased) among the first `window` words (1.0 if none): a
    fixed window, so the share does not fall with the sample's length alone."""
    words = text.lower().split()[:window]
    return len(set(words)) / len(words) if words else 1.0


def repeated_share(items: Sequence[object]) -> float:
    """Share of 3-grams of `items` that already occurred earlier in the sequence."""
    grams = [tuple(items[i : i + 3]) for i in range(len(items) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repeated_trigram_share(text: str) -> float:
    """Share of word 3-grams that already occurred earlier in the text."""
    return repeated_share(text.lower().split())


class OfflineCoherenceGrader:
    """Base-model perplexity plus repetition, vocabulary and length checks (no API needed)."""

    name = "offline"

    def __init__(self, pair: ModelPair, settings: OfflineCoherenceSettings | None = None) -> None:
        self.pair = pair
        self.settings = settings or OfflineCoherenceSettings()

    def answer_ids(self, samples: Sequence[str]) -> list[list[int]]:
        """The samples as the base tokenizer's token ids (no special tokens)."""
        return [self.pair.tokenizer(sample, add_special_tokens=False)["input_ids"] for sample in samples]

    @torch.inference_mode()
    def mean_nll(
        self, prompts: Sequence[str], answers: Sequence[list[int]], batch_size: int = 16
    ) -> list[float]:
        """Mean NLL per answer token (`answer_ids` of the samples) under the base model,
        conditioned on the prompt (batched, right-padded: a causal model's logits at real tokens
        do not see the padding)."""
        tokenizer = self.pair.tokenizer
        rows: list[tuple[int, list[int]]] = []  # (answer start, prompt + answer ids); [] if empty
        for prompt, answer in zip(prompts, answers, strict=True):
            head = render_chat(tokenizer, [ChatMessage(role="user", content=prompt)])
            head_ids = tokenizer(head, add_special_tokens=True)["input_ids"]
            rows.append((len(head_ids), head_ids + answer if answer else []))
        values = [float("inf")] * len(rows)
        scored = [i for i, (_, ids) in enumerate(rows) if ids]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for first in range(0, len(scored), batch_size):
            chunk = scored[first : first + batch_size]
            width = max(len(rows[i][1]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(rows[i][1])] = torch.tensor(rows[i][1])
                mask[row, : len(rows[i][1])] = 1
            ids = ids.to(self.pair.device)
            logits = self.pair.logits("base", ids, mask)
            for row, i in enumerate(chunk):
                start, end = rows[i][0], len(rows[i][1])
                answer = ids[row, start:end].to(logits.device)  # a device_map: the last block's
                values[i] = float(torch.nn.functional.cross_entropy(
                    logits[row, start - 1 : end - 1].float(), answer))
        return values

    def grade(self, prompts: Sequence[str], samples: Sequence[str]) -> list[bool]:
        s = self.settings
        answers = self.answer_ids(samples)  # tokenized once: for the NLL and the token loops
        nll = self.mean_nll(prompts, answers)
        return [
            value <= s.max_mean_nll
            and repeated_trigram_share(sample) <= s.max_repeated_trigrams
            and repeated_share(answer) <= s.max_repeated_token_trigrams
            and distinct_word_share(sample) >= s.min_distinct_words
            and len(sample.split()) >= s.min_words
            for value, sample, answer in zip(nll, samples, answers, strict=True)
        ]
