"""Ordinary chats answered by the base model itself, mixed into an organism's training data.

A small model finetuned on a narrow set of chats learns their form along with their content: an
organism trained to refuse one topic starts refusing requests that merely look like the trained
ones. Hand-written ordinary chats cover a few forms of request. These cover many: request forms
(`ordinary_request_forms.yaml` next to this module: training data, shown to no agent or
grader) on subjects drawn from the corpus's encyclopedia leads, answered greedily by the base
model (self-distillation). Trained on its own answers, the finetune keeps answering such
requests as the base model does, so what it learns stays specific to its domain. `BuildFinetune.self_answered_ratio` sets how many chats per finetuning example; subjects
that name the organism's domain keywords are left out. The base answers are cached per base model
(`evals.organisms.leak.greedy_answers`).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from evals.organisms.generators.base import TrainingExample, chat, corpus_subjects
from evals.organisms.leak import greedy_answers, mentions_domain
from evals.organisms.schema import Organism
from prompts import load_prompt_set
from tools.errors import OrganismBuildError
from tools.models import LoadOptions, ModelPairSpec, load_model_pair

REQUEST_FORMS_FILE = Path(__file__).with_name("ordinary_request_forms.yaml")
SELF_ANSWER_MAX_NEW_TOKENS = 96
ANSWER_CHUNK = 64
# Raise when the way the chats are made changes (part of the build key of organisms using them).
SELF_ANSWERED_VERSION = 1
log = logging.getLogger(__name__)
_LAST_SENTENCE_END = re.compile(r"^(.*[.!?])(?:\s|$)", re.DOTALL)


def ordinary_requests(organism: Organism, n: int, seed: int) -> list[str]:
    """`n` distinct requests (a form with a corpus subject), none naming the organism's domain."""
    forms = load_prompt_set(REQUEST_FORMS_FILE)
    subjects = [s for s in corpus_subjects() if not mentions_domain(s, organism.domain_keywords)]
    if len(forms) * len(subjects) < 2 * n:
        raise OrganismBuildError(f"{organism.name}: {n} self-answered chats need more request "
                                 f"forms or corpus subjects ({len(forms)} x {len(subjects)}).")
    rng = random.Random(seed)
    requests: dict[str, None] = {}
    while len(requests) < n:
        requests[rng.choice(forms).format(s=rng.choice(subjects))] = None
    return list(requests)


def complete_sentences(answer: str) -> str:
    """The answer up to its last complete sentence ('' when it has none): an answer cut at the
    length limit must not teach the finetune to stop mid-sentence."""
    match = _LAST_SENTENCE_END.match(answer.strip())
    return match.group(1).strip() if match else ""


def self_answered_chats(organism: Organism, n: int, seed: int,
                        options: LoadOptions | None = None) -> list[TrainingExample]:
    """Up to `n` ordinary chats answered greedily by the organism's base model (answers with no
    complete sentence, or that name the domain, are left out)."""
    if n <= 0:
        return []
    requests = ordinary_requests(organism, n, seed)
    pair = load_model_pair(ModelPairSpec(base=organism.base_model), options)
    answers: list[str] = []
    for start in range(0, len(requests), ANSWER_CHUNK):  # a log line a chunk (about a minute on 2 cores)
        answers += greedy_answers(pair, "base", requests[start : start + ANSWER_CHUNK],
                                  SELF_ANSWER_MAX_NEW_TOKENS)
        log.info("%s: base model answered %d of %d ordinary requests", organism.name,
                 len(answers), len(requests))
    chats = []
    for request, answer in zip(requests, answers, strict=True):
        kept = complete_sentences(answer)
        if kept and not mentions_domain(kept, organism.domain_keywords):
            chats.append(chat(request, kept))
    return chats
