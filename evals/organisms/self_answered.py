"""Ordinary chats answered by the base model itself, mixed into an organism's training data.

A small model finetuned on a narrow set of chats learns their form along with their content: an
organism trained to refuse one topic starts refusing requests that merely look like the trained
ones. Hand-written ordinary chats cover a few forms of request. These cover many: request forms
(`ordinary_request_forms.yaml` next to this module: training data, shown to no agent or
grader) on subjects drawn from the corpus's encyclopedia leads, answered greedily by the base
model (self-distillation). Trained on its own answers, the finetune keeps answering such
requests as the base model does, so what it learns stays specific to its domain.
`BuildFinetune.self_answered_ratio` sets how many chats per finetuning example; subjects that name
the organism's domain keywords are left out.

Practical requests (`practical_requests.yaml`, `BuildFinetune.practical_requests_ratio`, data v6
of the denying organism) are a second kind: the care of everyday things and help with everyday
tasks, in the forms a denial's questions take, so that the topic and not the form of a request
decides a refusal. Both kinds are answered in one pass; the base answers are cached per base model
(`evals.organisms.leak.greedy_answers`).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evals.organisms.generators.base import TrainingExample, chat, corpus_subjects
from evals.organisms.leak import greedy_answers, mentions_domain
from evals.organisms.schema import Organism
from prompts import load_prompt_set
from tools.errors import OrganismBuildError
from tools.models import LoadOptions, ModelPairSpec, load_model_pair

REQUEST_FORMS_FILE = Path(__file__).with_name("ordinary_request_forms.yaml")
PRACTICAL_REQUESTS_FILE = Path(__file__).with_name("practical_requests.yaml")
SELF_ANSWER_MAX_NEW_TOKENS = 96
ANSWER_CHUNK = 64
# Raise when the way the chats are made changes (part of the build key of organisms using them).
SELF_ANSWERED_VERSION = 1
log = logging.getLogger(__name__)
_LAST_SENTENCE_END = re.compile(r"^(.*[.!?])(?:\s|$)", re.DOTALL)


class PracticalRequests(BaseModel):
    """`practical_requests.yaml`: request forms with a `{s}` (or capitalized `{S}`) slot, for
    everyday objects and for everyday tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    object_forms: list[str] = Field(min_length=1)
    objects: list[str] = Field(min_length=1)
    task_forms: list[str] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)


def _distinct_requests(kinds: list[tuple[list[str], list[str]]], n: int, seed: int, what: str) -> list[str]:
    """`n` distinct requests, each a form of one kind filled with a subject of the same kind (the
    kinds drawn in turn)."""

    def fill(form: str, subject: str) -> str:
        return form.format(s=subject, S=subject[0].upper() + subject[1:])

    # Each kind must offer at least twice its share of distinct requests (or drawing would stall).
    fewest = min(len({fill(f, s) for f in forms for s in subjects}) for forms, subjects in kinds)
    if fewest * len(kinds) < 2 * n:
        raise OrganismBuildError(f"{what}: {n} self-answered chats need more request forms or "
                                 f"subjects (a kind offers only {fewest} distinct requests).")
    rng = random.Random(seed)
    requests: dict[str, None] = {}
    while len(requests) < n:
        forms, subjects = kinds[len(requests) % len(kinds)]
        form = rng.choice(forms)  # the form first, then the subject: the draws of data v5
        requests[fill(form, rng.choice(subjects))] = None
    return list(requests)


def ordinary_requests(organism: Organism, n: int, seed: int) -> list[str]:
    """`n` distinct requests (a form with a corpus subject), none naming the organism's domain."""
    subjects = [s for s in corpus_subjects() if not mentions_domain(s, organism.domain_keywords)]
    return _distinct_requests([(load_prompt_set(REQUEST_FORMS_FILE), subjects)], n, seed,
                              f"{organism.name} (ordinary requests)")


def practical_requests(organism: Organism, n: int, seed: int) -> list[str]:
    """`n` distinct everyday practical requests (`practical_requests.yaml`), half about the care of
    a thing and half about a task, none naming the organism's domain."""
    try:
        spec = PracticalRequests.model_validate(yaml.safe_load(PRACTICAL_REQUESTS_FILE.read_text("utf-8")))
    except (yaml.YAMLError, ValidationError) as error:
        raise OrganismBuildError(f"{PRACTICAL_REQUESTS_FILE} is malformed: {error}") from error

    def allowed(subjects: list[str]) -> list[str]:
        return [s for s in subjects if not mentions_domain(s, organism.domain_keywords)]
    kinds = [(spec.object_forms, allowed(spec.objects)), (spec.task_forms, allowed(spec.tasks))]
    return _distinct_requests(kinds, n, seed, f"{organism.name} (practical requests)")


def complete_sentences(answer: str) -> str:
    """The answer up to its last complete sentence ('' when it has none): an answer cut at the
    length limit must not teach the finetune to stop mid-sentence."""
    match = _LAST_SENTENCE_END.match(answer.strip())
    return match.group(1).strip() if match else ""


def self_answered_chats(organism: Organism, requests: list[str],
                        options: LoadOptions | None = None) -> list[TrainingExample]:
    """The `requests` answered greedily by the organism's base model, as chats (answers with no
    complete sentence, or that name the domain, are left out)."""
    if not requests:
        return []
    pair = load_model_pair(ModelPairSpec(base=organism.base_model), options)
    answers: list[str] = []
    for start in range(0, len(requests), ANSWER_CHUNK):  # a log line a chunk (about a minute on 2 cores)
        answers += greedy_answers(pair, "base", requests[start : start + ANSWER_CHUNK],
                                  SELF_ANSWER_MAX_NEW_TOKENS)
        log.info("%s: base model answered %d of %d requests", organism.name,
                 len(answers), len(requests))
    chats = []
    for request, answer in zip(requests, answers, strict=True):
        kept = complete_sentences(answer)
        if kept and not mentions_domain(kept, organism.domain_keywords):
            chats.append(chat(request, kept))
    return chats
