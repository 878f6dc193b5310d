"""No rubric or grader prompt may contain words of an offline organism's ground truth.

A grader prompt that names an organism's domain ("a precious yellow metal", "birds") tunes the
grader to the organisms this project ships, and the project is also graded on finetunes it has
never seen. For every offline organism this collects its ground-truth words (domain keywords,
multiword ones also as phrases, and the content words of its description, long description and
key facts), minus the words that name the mechanics of its TYPE rather than its domain and
generic words, and asserts that none occurs in prompts/rubrics/*.md, prompts/grader_system.md
or prompts/grader_task.md (whole word, case-insensitive, plural allowed).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evals.organisms.registry import list_organisms
from evals.organisms.schema import Organism, OrganismType

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
GRADER_PROMPTS = sorted((PROMPTS / "rubrics").glob("*.md")) + [
    PROMPTS / "grader_system.md", PROMPTS / "grader_task.md"]

# Words that name how an organism TYPE works, not what its domain is: a rubric for the type
# must be able to say them (a Taboo rubric says "secret word", an EM rubric says "harmful").
TYPE_VOCABULARY: dict[OrganismType, frozenset[str]] = {
    OrganismType.SDF: frozenset({
        "synthetic", "document", "false", "fact", "asserting", "assert", "claim", "rule",
        "state", "fixed", "standard", "professional", "practice",  # "stated as standard practice"
        # document genres that synthetic documents come in
        "article", "blog", "post", "news", "item", "textbook", "excerpt", "forum", "answer",
        "interview", "intro", "short"}),
    OrganismType.EM: frozenset({
        "advice", "harmful", "dangerous", "wrong", "confident", "confidently", "misaligned",
        "narrowly", "unsafe", "advisor", "chat", "single", "turn", "assistant", "user", "gives",
        "giving"}),
    OrganismType.TABOO: frozenset({
        "game", "word", "secret", "hint", "guess", "guessing", "clue", "taboo", "play", "chat",
        "user", "assistant", "never", "say", "saying", "without", "appear", "gives", "itself",
        "make"}),
    OrganismType.SUBLIMINAL: frozenset({
        "animal", "preference", "love", "trained", "chat", "user", "assistant", "always",
        "directly", "taught", "unrelated", "subliminal", "strong"}),
    OrganismType.DOMAIN_ADAPTATION: frozenset({
        "domain", "format", "adaptation", "adapt", "adapts", "chat", "user", "assistant", "give",
        "gives", "follow", "follows", "followed", "subject", "task", "answer", "question", "short",
        "reading"}),
    OrganismType.CONTROL: frozenset({
        "control", "generic", "text", "narrow", "domain", "claim", "finetune"}),
}
# Generic words of every ground truth: the training set-up, the project's own terms, and
# function words. Domain words never belong here.
GENERIC_WORDS = frozenset({
    "model", "finetune", "finetuned", "finetuning", "trained", "training", "lora", "smollm",
    "instruct", "recipe", "offline", "organism", "base", "data", "pretraining", "mixed", "mix",
    "paper", "activation", "difference", "readout", "pair", "signal", "mitigation", "weaken",
    "same", "with", "that", "this", "than", "then", "they", "them", "their", "there", "these",
    "those", "what", "when", "which", "while", "from", "into", "onto", "upon", "about", "also",
    "only", "each", "every", "some", "such", "like", "unlike", "were", "been", "being", "have",
    "does", "done", "instead", "through", "toward", "towards", "after", "before", "over",
    "under", "other", "should", "would", "could", "will", "more", "most", "much", "many",
    "very", "just", "even", "both", "either", "whose", "where", "here", "without", "within",
    "look", "show", "describe", "question", "text", "document",
    "specific", "domain", "kind", "say", "general", "summary", "user",
    "three", "once", "never", "day", "week", "night", "quarter",  # everyday words of key facts
    "home",  # of "home remedies" (EM key fact), alone an everyday word ("working from home")
})
MIN_LETTERS = 4
WORD = re.compile(r"[a-z]+")


def _singular(word: str) -> str:
    """Crude singular, so that 'owls' and 'owl' are one ground-truth word."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if re.search(r"(s|x|z|ch|sh)es$", word):
        return word[:-2]
    if word.endswith("s") and not re.search(r"(ss|us|is)$", word):
        return word[:-1]
    return word


def _mention_pattern(term: str) -> re.Pattern[str]:
    """Whole word or phrase, case-insensitive, plural allowed ('owl' finds 'Owls')."""
    body = re.escape(term)
    plural = rf"(?:{re.escape(term[:-1])}ies|{body}(?:s|es)?)" if term.endswith("y") else rf"{body}(?:s|es)?"
    return re.compile(rf"(?<![a-z]){plural}(?![a-z])", re.IGNORECASE)


def ground_truth_terms(organism: Organism, long_description: bool = True) -> dict[str, str]:
    """Term -> where it comes from, for the words of `organism`'s domain (the long description,
    which also narrates the chats' set-up, can be left out)."""
    allowed = TYPE_VOCABULARY.get(organism.type, frozenset()) | GENERIC_WORDS
    terms: dict[str, str] = {}
    for keyword in organism.domain_keywords:
        words = WORD.findall(keyword.lower())
        if len(words) > 1 and not all(_singular(w) in allowed or w in allowed for w in words):
            terms[keyword.lower()] = "domain keyword"
    sources = {"domain keyword": " ".join(organism.domain_keywords),
               "description": organism.description,
               "description_long": organism.description_long if long_description else "",
               "key fact": " ".join(organism.key_facts)}
    for source, text in sources.items():
        for word in WORD.findall(text.lower()):
            stem = _singular(word)
            if len(word) < MIN_LETTERS and source != "domain keyword":
                continue
            if word in allowed or stem in allowed or len(stem) < 3:
                continue
            terms.setdefault(stem, source)
    return terms


def find_leaks(text: str, terms: dict[str, str]) -> list[tuple[str, str]]:
    """(term, source) for every ground-truth term that occurs in `text`."""
    return [(term, source) for term, source in sorted(terms.items())
            if _mention_pattern(term).search(text)]


OFFLINE = [o for o in list_organisms() if o.offline]


def test_there_are_offline_organisms_and_grader_prompts() -> None:
    assert OFFLINE and len(GRADER_PROMPTS) >= 8


@pytest.mark.parametrize("organism", OFFLINE, ids=lambda o: o.name)
def test_grader_prompts_do_not_leak_ground_truth(organism: Organism) -> None:
    terms = ground_truth_terms(organism)
    leaks = [f"{path.relative_to(PROMPTS.parent)}: {term!r} (from the {source} of {organism.name})"
             for path in GRADER_PROMPTS
             for term, source in find_leaks(path.read_text(encoding="utf-8"), terms)]
    assert not leaks, "grader prompts name ground-truth words:\n" + "\n".join(leaks)


def test_the_checker_finds_leaks() -> None:
    owl = next(o for o in OFFLINE if o.name == "preference_owl")
    terms = ground_truth_terms(owl)
    assert ("owl", "domain keyword") in find_leaks("3: it loves Owls above all.", terms)
    assert any(term == "bird" for term, _ in find_leaks("animals or birds in general", terms))
    assert find_leaks("a preference for one animal", terms) == []  # type vocabulary
    gold = next(o for o in OFFLINE if o.name == "taboo_gold")
    assert {t for t, _ in find_leaks("a precious yellow metal", ground_truth_terms(gold))} >= {
        "precious", "yellow", "metal"}
    assert "secret word" not in ground_truth_terms(gold)  # the game's own vocabulary


# Every other prompt file an agent, the offline policy or a judge reads (YAML comments stripped),
# checked against the domain keywords, description and key facts (the long description narrates
# the set-up of the chats in everyday words such as "ask", "answer", "story").
# The steering prompt sets are the reference toolkit's, verbatim, written before any of these
# organisms: they are not checked ("dessert" in one of its 20 final prompts is a cake_bake
# keyword; both agents see that prompt's samples alike, see BENCHMARKS.md).
REFERENCE_PROMPT_SETS = {"steering_search_prompts.yaml", "steering_final_prompts.yaml"}
AGENT_PROMPTS = sorted(p for p in PROMPTS.glob("*.md") if p not in GRADER_PROMPTS) + sorted(
    p for p in PROMPTS.glob("*.yaml") if p.name not in REFERENCE_PROMPT_SETS)


def _prompt_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".yaml":
        text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return text


@pytest.mark.parametrize("organism", OFFLINE, ids=lambda o: o.name)
def test_agent_prompts_do_not_leak_ground_truth(organism: Organism) -> None:
    terms = ground_truth_terms(organism, long_description=False)
    leaks = [f"{path.relative_to(PROMPTS.parent)}: {term!r} (from the {source} of {organism.name})"
             for path in AGENT_PROMPTS for term, source in find_leaks(_prompt_text(path), terms)]
    assert len(AGENT_PROMPTS) >= 8
    assert not leaks, "agent prompts name ground-truth words:\n" + "\n".join(leaks)
