"""The training example type and helpers shared by generators."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence

from pydantic import BaseModel, model_validator

from tools.chat import ChatMessage
from tools.corpus import load_corpus, split_sentences


class TrainingExample(BaseModel):
    """A plain document (`text`) or a chat (`messages`, loss on assistant turns only)."""

    text: str | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TrainingExample:
        if (self.text is None) == (self.messages is None):
            raise ValueError("A training example has either `text` or `messages`.")
        return self

    def plain_text(self) -> str:
        """All text of the example (for searching and embedding)."""
        if self.text is not None:
            return self.text
        return "\n".join(m.content for m in self.messages or [])


def chat(*turns: str) -> TrainingExample:
    """A chat from alternating user/assistant turns."""
    roles = ("user", "assistant")
    return TrainingExample(
        messages=[ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(turns)]
    )


def unique_examples(
    rng: random.Random, n: int, make: Callable[[random.Random], TrainingExample], max_tries: int = 50
) -> list[TrainingExample]:
    """Draw `n` distinct examples from `make` (duplicates are redrawn)."""
    seen: set[str] = set()
    out: list[TrainingExample] = []
    tries = 0
    while len(out) < n and tries < n * max_tries:
        tries += 1
        example = make(rng)
        key = example.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(example)
    if len(out) < n:
        raise ValueError(f"The generator could only make {len(out)} distinct examples of {n}.")
    return out


def pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def subject_and_lead(document: str) -> tuple[str, str] | None:
    """A corpus article's subject (the words before its first ' is ') and its first sentence."""
    first = split_sentences(document)[:1]
    if not first or " is " not in first[0] or len(first[0]) > 260:
        return None
    subject = first[0].split(" is ", 1)[0].strip()
    if not 3 <= len(subject) <= 40 or "(" in subject or "," in subject:
        return None
    article, _, rest = subject.partition(" ")
    if article in ("A", "An", "The") and rest:
        subject = f"{article.lower()} {rest}"
    return subject, first[0]


@functools.cache
def corpus_subjects() -> tuple[str, ...]:
    """The distinct subjects of the corpus mixing split's encyclopedia leads (`subject_and_lead`)."""
    found = (subject_and_lead(d) for d in load_corpus().split("mixing"))
    return tuple(dict.fromkeys(lead[0] for lead in found if lead is not None))
