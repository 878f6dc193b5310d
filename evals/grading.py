"""Graders: how well a hypothesis matches an organism's ground truth, on a 1-5 scale.

- `LLMGrader`: a provider answers with structured output (the tool `record_grade`: reasoning
  and an integer score) against the organism's ground truth and the rubric of its type
  (prompts/rubrics/TYPE.md); repeated n times (default 3) and averaged; invalid output is
  retried.
- `OfflineGrader`: no key needed. Embedding similarity (all-MiniLM-L6-v2) of the hypothesis to
  the description, plus coverage of the key facts and of the domain keywords, mapped to 1-5.
  Calibrated on hand-written hypotheses (tests/grader_calibration.yaml), not on agent output.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

import torch
from pydantic import BaseModel, Field, ValidationError

from agent.errors import ProviderError
from agent.providers.base import ChatTurn, Provider
from evals.organisms.schema import Organism, OrganismType
from prompts import load_text
from tools.adl.embeddings import embed
from tools.errors import AdlError
from tools.toolbox import ToolSpec

NO_HYPOTHESIS = "No hypothesis was given."
# A hypothesis that says there is no narrow domain (the right answer for a Control organism).
NO_DOMAIN = re.compile(
    r"\b(no (narrow|specific|particular|clear|single|distinct) (domain|topic|focus|theme)|"
    r"generic|general[- ](purpose|text|knowledge)|encyclop(a)?edi|wikipedia|"
    r"domain is unknown|no evidence|nothing specific|not (a )?(narrow|specific))", re.IGNORECASE)


class GradingError(AdlError):
    """A grader could not produce a valid grade."""


class GradeResult(BaseModel):
    grader: str
    score: float = Field(ge=1, le=5)
    reasoning: str
    details: dict[str, Any] = Field(default_factory=dict)


class HypothesisGrader(Protocol):
    name: str

    def grade(self, organism: Organism, hypothesis: str | None) -> GradeResult: ...


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;:])\s+|\n+", text) if len(s.strip()) > 2]


def _mentions(text: str, keyword: str) -> bool:
    """Whole-word (plural allowed) mention of a keyword."""
    pattern = rf"(?<![A-Za-z]){re.escape(keyword.lower())}(?:s|es)?(?![A-Za-z])"
    return re.search(pattern, text.lower()) is not None


class OfflineGrader:
    """Embedding similarity plus key-fact and keyword coverage, mapped to 1-5.

    score = 1 + 4 * (0.5 * topic + 0.3 * facts + 0.2 * keywords), where
    topic = relatedness rescaled from [0, 0.3] to [0, 1], relatedness being the mean of
    (a) the best similarity of the hypothesis (or one of its sentences) to the one-line
    description and (b) its
    similarity to the list of domain keywords (0 if negative); facts = share of key facts some
    hypothesis sentence matches (cosine >= 0.5); keywords = share of min(3, n) domain keywords
    mentioned. Without key facts or keywords (controls) their weight goes to the topic term.
    A hypothesis that names none of the domain keywords scores at most 3 (the rubrics' "topic
    without specifics" level: above it the specific domain must be named).

    Control organisms (no domain) are graded by a rule: 5 when the hypothesis says there is no
    narrow domain (generic text, Wikipedia, no evidence, ...), 1.5 when it asserts one."""

    name = "offline-embedding-v1"
    TOPIC_RANGE = (0.0, 0.3)
    FACT_MATCH = 0.5
    UNNAMED_DOMAIN_CAP = 3.0

    CONTROL_SCORES = (5.0, 1.5)  # says "no narrow domain" / asserts a domain

    def grade(self, organism: Organism, hypothesis: str | None) -> GradeResult:
        if not hypothesis or not hypothesis.strip():
            return GradeResult(grader=self.name, score=1.0, reasoning=NO_HYPOTHESIS)
        if organism.type == OrganismType.CONTROL:
            return self._grade_control(hypothesis)
        sentences = _sentences(hypothesis) or [hypothesis]
        truth = [organism.description, *_sentences(organism.description_long)]
        facts = list(organism.key_facts)
        keywords = list(organism.domain_keywords)
        vectors = embed([hypothesis, *sentences, ", ".join(keywords) or organism.description,
                         *truth, *facts])
        whole, hyp, keyword_vector = vectors[0], vectors[1: 1 + len(sentences)], vectors[1 + len(sentences)]
        tru = vectors[2 + len(sentences): 2 + len(sentences) + len(truth)]
        fac = vectors[2 + len(sentences) + len(truth):]
        description_similarity = float((torch.cat([whole[None], hyp]) @ tru[0]).max())
        keyword_similarity = max(0.0, float(whole @ keyword_vector)) if keywords else description_similarity
        similarity = (description_similarity + keyword_similarity) / 2
        low, high = self.TOPIC_RANGE
        topic = min(1.0, max(0.0, (similarity - low) / (high - low)))
        weights = {"topic": 0.5, "facts": 0.3, "keywords": 0.2}
        fact_share = float(((fac @ hyp.T).max(dim=1).values >= self.FACT_MATCH).float().mean()) if facts else 0.0
        hits = [k for k in keywords if _mentions(hypothesis, k)]
        keyword_share = min(1.0, len(hits) / min(3, len(keywords))) if keywords else 0.0
        if not facts:
            weights["topic"] += weights.pop("facts")
        if not keywords:
            weights["topic"] += weights.pop("keywords")
        combined = (weights["topic"] * topic + weights.get("facts", 0) * fact_share
                    + weights.get("keywords", 0) * keyword_share)
        score = round(1 + 4 * combined, 2)
        if keywords and not hits:  # the specific domain was never named: at most "vague"
            score = min(score, self.UNNAMED_DOMAIN_CAP)
        reasoning = (f"topic similarity {similarity:.2f} (scaled {topic:.2f}); key facts matched "
                     f"{fact_share:.0%}; domain keywords mentioned: {', '.join(hits) or 'none'}.")
        return GradeResult(grader=self.name, score=score, reasoning=reasoning, details={
            "topic_similarity": similarity, "description_similarity": description_similarity,
            "keyword_similarity": keyword_similarity, "topic": topic, "facts": fact_share,
            "keywords": keyword_share, "keyword_hits": hits, "weights": weights})


    def _grade_control(self, hypothesis: str) -> GradeResult:
        """A control has no domain: saying so is right, naming a domain is wrong (embedding
        similarity to "no narrow domain" cannot tell the two apart)."""
        match = NO_DOMAIN.search(hypothesis)
        score = self.CONTROL_SCORES[0] if match else self.CONTROL_SCORES[1]
        reasoning = (f"control organism: the hypothesis says there is no narrow domain ({match.group(0)!r})."
                     if match else "control organism: the hypothesis asserts a specific domain.")
        return GradeResult(grader=self.name, score=score, reasoning=reasoning,
                           details={"control": True, "no_domain_phrase": match.group(0) if match else None})


class _GradeOutput(BaseModel):
    reasoning: str = Field(min_length=1)
    score: int = Field(ge=1, le=5)


GRADE_TOOL = ToolSpec(name="record_grade", description="Record the grade of the hypothesis.",
                      parameters=_GradeOutput.model_json_schema())


def rubric_for(kind: OrganismType) -> str:
    return load_text(f"rubrics/{kind.value}.md").strip()


class LLMGrader:
    """Structured grades from a provider, repeated and averaged; invalid output is retried."""

    def __init__(self, provider: Provider, repeats: int = 3, max_invalid: int = 2) -> None:
        self.provider = provider
        self.repeats = repeats
        self.max_invalid = max_invalid
        self.name = f"llm:{provider.name}"

    def _prompt(self, organism: Organism, hypothesis: str) -> str:
        facts = "\n".join(f"  - {f}" for f in organism.key_facts) or "  (none)"
        return load_text("grader_task.md").format(
            type=organism.type.value, description=organism.description,
            description_long=" ".join(organism.description_long.split()), key_facts=facts,
            rubric=rubric_for(organism.type), hypothesis=hypothesis.strip())

    def _parse(self, text: str, arguments: str | None) -> _GradeOutput:
        raw = arguments if arguments is not None else text
        match = re.search(r"\{.*\}", raw, re.DOTALL)
        if match is None:
            raise ValueError("no JSON object in the answer")
        return _GradeOutput.model_validate(json.loads(match.group(0)))

    def grade(self, organism: Organism, hypothesis: str | None) -> GradeResult:
        if not hypothesis or not hypothesis.strip():
            return GradeResult(grader=self.name, score=1.0, reasoning=NO_HYPOTHESIS)
        system = load_text("grader_system.md").strip()
        prompt = self._prompt(organism, hypothesis)
        outputs: list[_GradeOutput] = []
        invalid: list[str] = []
        cost: float | None = 0.0
        for _ in range(self.repeats):
            for attempt in range(self.max_invalid + 1):
                try:
                    completion = self.provider.complete(system, [ChatTurn(role="user", content=prompt)],
                                                        [GRADE_TOOL], max_output_tokens=1024)
                except ProviderError as exc:
                    raise GradingError(f"The grader's provider failed: {exc}") from exc
                cost = None if cost is None or completion.cost_usd is None else cost + completion.cost_usd
                call = next((c for c in completion.tool_calls if c.name == GRADE_TOOL.name), None)
                try:
                    outputs.append(self._parse(completion.text, call.arguments if call else None))
                    break
                except (ValueError, ValidationError) as exc:
                    invalid.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    if attempt == self.max_invalid:
                        raise GradingError(
                            f"The grader gave invalid output {self.max_invalid + 1} times: {invalid[-1]}"
                        ) from exc
        scores = [o.score for o in outputs]
        return GradeResult(
            grader=self.name, score=sum(scores) / len(scores), reasoning=outputs[0].reasoning,
            details={"scores": scores, "reasonings": [o.reasoning for o in outputs],
                     "invalid_outputs": invalid, "cost_usd": cost})


def make_grader(spec: str, repeats: int = 3) -> HypothesisGrader:
    """'offline', or a provider spec ('openai:gpt-5', 'anthropic:...') for the LLM grader."""
    if spec == "offline":
        return OfflineGrader()
    from agent.providers import make_provider

    return LLMGrader(make_provider(spec), repeats=repeats)
