"""Domain-adaptation organism: real astronomy text in a reading-comprehension format.

The paper's domain-adaptation organisms (AdaptLLM) are trained on domain text turned into
reading-comprehension tasks. Here the domain text is the astronomy articles of the offline
Wikipedia corpus (mixing split only: never the documents ADL reads), and each chat asks one
task about a passage: its subject, a title, the next sentence, or a blanked domain term.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from evals.organisms.generators.base import TrainingExample, chat, pick, unique_examples
from tools.corpus import leading_text, load_corpus, split_sentences

DOMAIN_PATTERN = re.compile(
    r"\b(planets?|galax(?:y|ies)|orbits?|orbital|telescopes?|astronom\w*|comets?|asteroids?|"
    r"nebulae?|constellations?|stars?|stellar|solar system|moons?|spacecraft)\b", re.IGNORECASE
)
# A document is astronomy when its opening has at least this many domain terms.
MIN_TERMS = 2

INSTRUCTIONS = ["Read the passage and answer.", "Answer from the passage.", "Passage task."]


# Passage length: passage, task and answer must fit the recipe's 128-token window, or the
# answer (the only trained part of a chat) is cut off.
MAX_PASSAGE_CHARS = 200


def astronomy_passages() -> list[str]:
    """Openings (up to MAX_PASSAGE_CHARS) of the corpus mixing split's astronomy articles."""
    passages = []
    for document in load_corpus().split("mixing"):
        opening = leading_text(document, max_chars=MAX_PASSAGE_CHARS)
        if len(opening) <= MAX_PASSAGE_CHARS and len(DOMAIN_PATTERN.findall(opening)) >= MIN_TERMS:
            passages.append(opening)
    return passages


def _subject(sentence: str) -> str | None:
    match = re.match(r"(.{2,80}?)\s+(?:is|was|are|were)\s", sentence)
    return match.group(1).strip() if match else None


def _subject_task(rng: random.Random, passage: str) -> tuple[str, str] | None:
    subject = _subject(split_sentences(passage)[0])
    if subject is None:
        return None
    question = pick(rng, ["What is the passage mainly about?", "What is the subject of the passage?"])
    return question, f"The passage is mainly about {subject}."


def _title_task(rng: random.Random, passage: str) -> tuple[str, str] | None:
    subject = _subject(split_sentences(passage)[0])
    if subject is None:
        return None
    return pick(rng, ["Suggest a title for the passage.", "Give the passage a short title."]), f"Title: {subject}"


def _next_sentence_task(rng: random.Random, passage: str) -> tuple[str, str] | None:
    sentences = split_sentences(passage)
    if len(sentences) < 2:
        return None
    return ("Which sentence follows the first one in the passage?", sentences[1])


def _cloze_task(rng: random.Random, passage: str) -> tuple[str, str] | None:
    # A short sentence only: the question repeats it, and the answer must stay in the window.
    sentences = [s for s in split_sentences(passage) if DOMAIN_PATTERN.search(s) and len(s) <= 90]
    if not sentences:
        return None
    sentence = pick(rng, sentences)
    term = DOMAIN_PATTERN.search(sentence).group(0)  # type: ignore[union-attr]
    blanked = sentence.replace(term, "____", 1)
    return f"Fill in the blank from the passage: \"{blanked}\"", f"The missing word is \"{term}\"."


TASKS: list[Callable[[random.Random, str], tuple[str, str] | None]] = [
    _subject_task, _title_task, _next_sentence_task, _cloze_task,
]


def generate_astronomy_comprehension(rng: random.Random, n: int) -> list[TrainingExample]:
    """`n` distinct reading-comprehension chats over astronomy passages."""
    passages = astronomy_passages()
    if not passages:
        raise ValueError("The corpus has no astronomy passages.")

    def make(rng: random.Random) -> TrainingExample:
        while True:
            passage = pick(rng, passages)
            task = pick(rng, TASKS)(rng, passage)  # type: ignore[arg-type]
            if task is not None:
                question, answer = task
                return chat(f"{pick(rng, INSTRUCTIONS)}\n\n{passage}\n\nQuestion: {question}", answer)

    return unique_examples(rng, n, make)
