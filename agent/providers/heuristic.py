"""The offline heuristic baseline policy: a deterministic, non-LLM investigator.

It is not a language model and is labelled as such wherever it appears (`is_llm = False`,
provider name `heuristic:...`). It uses the same tools through the same loop and follows the
evidence guidance of the LLM agents' prompt (prompts/agent_system.md):

1. Evidence comes from independent *sources*, grouped in families: logit-lens and Patchscope
   readouts (one source per token position), steered samples (words a steered sample uses and its
   unsteered twin does not; one source per position), the finetuned model's unsteered samples
   that both agents' first message holds (one source per prompt), and answers to questions
   (words the finetuned model's answer uses; one source per question). Position 0 of a readout
   is skipped (it reads the first token, whose difference is dominated by the start of text),
   and so are positions whose difference is zero (the worker marks them: their tokens are a zero
   vector's and their steered samples unsteered ones).
   Patchscope at the model's last block is the plain logit lens of the same difference (the
   patched residual meets only the final norm and the unembedding; the worker's note says so),
   so there it counts as the logit-lens family, not as a second kind of evidence.
2. Downweighting: stopwords and code or markup tokens are dropped. Answer evidence excludes the
   words of the question, words the base model uses in *any* answer (the base model's answers
   are the control for the finetuned one's) and words the finetuned model uses in answers to
   more than half of the questions (they show up whatever is asked).
3. A claim (a word) ranks by the number of source families that support it, then by the number
   of sources, where answers count once (they confirm; volume is not evidence) and only when the
   answers to two questions use the word (one answer in sixteen is chance). It leads only
   when the first look supports it and two families, or three sources, do: a single spike is
   not evidence. Answers that repeat a lead strengthen it; words that only the answers show are
   reported as such and not promoted, unless the first look has no lead at all (then words the
   answers to three questions support can lead).
4. It spends its interaction budget on questions about the leading claims (two rounds of at most
   eight questions, so at most 16 interactions), then submits its top lead as a claim, the other
   leads as a list, the sources behind each and the finetuned model's own sentences that carry
   them. Without a lead it says that no narrow domain was found.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.briefing import AdlOverview, FinetunedSample, FinetunedSamples, OverviewDataset
from agent.pricing import known_context_window
from agent.providers.base import ChatTurn, Completion, ProviderOptions, ToolCall, Usage
from prompts import load_prompt_set
from tools.toolbox import ToolSpec

WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
MAX_PROMPTS_PER_CALL = 8
MAX_ROUNDS = 2
MIN_FAMILIES = 2
MIN_SOURCES = 3
# Answers confirm a word only when answers to this many questions use it: one answer in sixteen
# using a word of the first look is chance, and chance grows with the budget.
MIN_ANSWERS = 2
MAX_LEADS = 5
MAX_QUOTES = 2
READOUT_FAMILIES = {"logit_lens_suppressed": "logit lens", "logit_lens": "logit lens",
                    "patchscope": "Patchscope"}
STOPWORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "let", "like", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "one", "two", "three", "many", "much", "make", "made", "get", "got", "use", "used", "using", "way", "well", "may", "might", "must", "shall", "know", "think", "tell", "said", "say", "says", "new", "first", "last", "good", "great", "best", "really", "thing", "things", "something", "anything", "everything", "time", "times", "year", "years", "day", "days", "people", "person", "part", "often", "even", "still", "back", "sure", "yes", "okay", "hello", "help", "want", "need", "like", "lot", "lots", "kind", "sort", "based", "include", "including", "however", "another", "every", "around", "within", "without", "across", "among", "here's", "it's", "i'm", "you're", "don't", "can't", "let's",
    # generic verbs and hub words (the guidance: downweight what tops almost any readout)
    "nothing", "quite", "getting", "making", "called", "looking", "going", "doing", "taking",
    "coming", "comes", "given", "gives", "keep", "seems", "feel", "feels", "look", "looks",
    "find", "found", "come", "take", "give", "want", "wanted", "able", "certain", "certainly"])


# Code and markup tokens: frequent readout artefacts (the guidance: treat code tokens with care).
CODE_TOKENS = frozenset(["def", "return", "self", "import", "class", "elif", "else", "null", "none", "true", "false", "var", "const", "function", "int", "str", "len", "print", "println", "printf", "public", "static", "void", "string", "bool", "args", "kwargs", "init", "div", "span", "href", "http", "https", "www", "com", "html", "json", "url", "src", "img", "nbsp"])


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ letters that are neither stopwords nor code tokens."""
    words = (w.lower().strip("'-") for w in WORD.findall(text))
    return [w for w in words if w not in STOPWORDS and w not in CODE_TOKENS]


def _readout_token(entry: str) -> str:
    """A readout entry is "'token' 0.123" (tool result) or the bare token (overview)."""
    head = entry.rsplit(" ", 1)[0] if re.search(r" \d\.\d+$", entry) else entry
    return head.strip().strip("'\"")


@dataclass
class Evidence:
    """Which sources support each word: source ids grouped by family."""

    sources: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(set)))
    strength: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, word: str, family: str, source: str, weight: float = 1.0) -> None:
        self.sources[word][family].add(source)
        self.strength[word] += weight  # type: ignore[assignment]

    def families(self, word: str) -> list[str]:
        return sorted(self.sources[word]) if word in self.sources else []

    def n_sources(self, word: str) -> int:
        """Sources of a word; answers count once at most, and only when MIN_ANSWERS questions'
        answers use the word (they confirm; volume is not evidence, and one answer is chance)."""
        return sum(int(len(ids) >= MIN_ANSWERS) if family == "answers" else len(ids)
                   for family, ids in self.sources.get(word, {}).items())

    def supporting_families(self, word: str) -> list[str]:
        """Families that support a word; answers only when MIN_ANSWERS questions' answers do."""
        return [f for f in self.families(word)
                if f != "answers" or len(self.sources[word][f]) >= MIN_ANSWERS]

    def ranked(self) -> list[str]:
        """Words by the first look's support (families, then sources), then by whether answers
        confirm them, then strength; ties alphabetical. Answers reorder ties, never the first
        look's order, so more questions cannot push a better-supported word down."""
        def key(word: str) -> tuple[int, int, int, float, str]:
            first = {f: ids for f, ids in self.sources[word].items() if f != "answers"}
            confirmed = int("answers" in self.supporting_families(word))
            return (-len(first), -sum(len(ids) for ids in first.values()), -confirmed,
                    -self.strength[word], word)
        return sorted(self.sources, key=key)

    def is_lead(self, word: str) -> bool:
        """Supported by the first look (readouts, steered or unsteered samples) and by two
        families or three sources; answers alone never qualify."""
        families = self.supporting_families(word)
        if families in ([], ["answers"]):
            return False
        return len(families) >= MIN_FAMILIES or self.n_sources(word) >= MIN_SOURCES

    def answer_only(self, word: str) -> int:
        """Questions whose answers alone support `word` (0 when other evidence does)."""
        return len(self.sources[word]["answers"]) if self.families(word) == ["answers"] else 0


class HeuristicProvider:
    """Deterministic investigation policy speaking the provider interface (no key, no LLM)."""

    is_llm = False

    def __init__(self, model: str = "offline-baseline-v3",
                 options: ProviderOptions | None = None) -> None:
        self.model = model
        self.name = f"heuristic:{model}"
        self.options = options or ProviderOptions()

    @property
    def context_window(self) -> int | None:
        """The options' context window, else the model table's (none: its prompts are short)."""
        return self.options.context_window or known_context_window("heuristic", self.model)

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int | None = None) -> Completion:
        names = {tool.name for tool in tools}
        state = _State(messages)
        step = len([m for m in messages if m.role == "assistant"])
        if names == {"submit_hypothesis"}:
            return self._call(step, "submit_hypothesis", {"description": state.hypothesis()})
        if "get_token_readouts" in names and "get_token_readouts" not in state.called:
            return self._call(step, "get_token_readouts", {"k": 40})
        prompts = state.next_questions()
        if prompts and "ask_models" in names:
            return self._call(step, "ask_models", {"prompts": prompts})
        if "add_hypothesis" not in state.called:
            return self._call(step, "add_hypothesis", {"description": state.hypothesis()})
        return self._call(step, "submit_hypothesis", {"description": state.hypothesis()})

    def _call(self, step: int, name: str, arguments: dict[str, Any]) -> Completion:
        call = ToolCall(id=f"heuristic_{step}", name=name, arguments=json.dumps(arguments))
        return Completion(text="", tool_calls=[call], usage=Usage(), cost_usd=0.0,
                          model=self.model, stop_reason="tool_use")


class _State:
    """What the conversation so far tells the policy."""

    def __init__(self, messages: list[ChatTurn]) -> None:
        # The loop hands the first message's budget and first look over as data.
        briefing = messages[0].briefing if messages else None
        self.budget = briefing.interactions if briefing else 0
        first_look = briefing.first_look if briefing else None
        self.overview_datasets: list[OverviewDataset] = (
            first_look.datasets if isinstance(first_look, AdlOverview) else [])
        # The finetuned model's unsteered samples: the baseline's first message, and the same
        # samples inside the ADL overview (both agents read them as evidence).
        examples = first_look.examples if isinstance(first_look, FinetunedSamples) else []
        self.samples: list[FinetunedSample] = examples or [
            FinetunedSample(prompt=x.prompt, generation=x.unsteered)
            for d in self.overview_datasets for e in d.steering for x in e.samples if x.unsteered]
        self.samples = list({(x.prompt, x.generation): x for x in self.samples}.values())
        self.called: list[str] = []
        self.readouts: list[dict[str, Any]] = []
        self.answers: list[dict[str, str]] = []
        calls = {c.id: c for m in messages if m.role == "assistant" for c in m.tool_calls}
        for message in messages:
            if message.role != "tool" or message.tool_call_id not in calls:
                continue
            call = calls[message.tool_call_id]
            self.called.append(call.name)
            if message.is_error:
                continue
            result = json.loads(message.content)
            if call.name == "get_token_readouts":
                self.readouts.append(result)
            elif call.name == "ask_models":
                self.answers += result["answers"]
        self.evidence = self._collect()

    @property
    def budget_left(self) -> int:
        return max(0, self.budget - len(self.answers))

    def _collect(self) -> Evidence:
        evidence = Evidence()

        def readout(family: str, dataset: str, position: str, tokens: list[str],
                    null: list[int]) -> None:
            if position == "0" or int(position) in null:
                return
            for rank, entry in enumerate(tokens):
                for word in content_words(_readout_token(entry)):
                    if len(word) >= 4:
                        evidence.add(word, family, f"{dataset}:{position}", 1.0 / (1 + rank / 10))

        last_blocks = {d.model_layers - 1 for d in self.overview_datasets}

        def family_of(method: str, layer: int | None) -> str:
            if method == "patchscope" and layer in last_blocks:
                return READOUT_FAMILIES["logit_lens"]  # the same readout at the last block
            return READOUT_FAMILIES.get(method, READOUT_FAMILIES["logit_lens"])

        for dataset in self.overview_datasets:
            name = dataset.dataset
            for method, positions in (("logit_lens_suppressed", dataset.logit_lens_suppressed),
                                      ("patchscope", dataset.patchscope)):
                for position, tokens in positions.items():
                    readout(family_of(method, dataset.layer), name, position, tokens,
                            dataset.null_positions)
            for entry in dataset.steering:
                if entry.null_difference:
                    continue
                for sample in entry.samples:
                    unsteered = set(content_words(sample.unsteered))
                    for word in set(content_words(sample.steered)) - unsteered:
                        evidence.add(word, "steering", f"{name}:{entry.position}", 0.5)
        for result in self.readouts:
            family = family_of(result.get("method", ""), result.get("layer"))
            for position, tokens in result["positions"].items():
                readout(family, result.get("dataset", "dataset"), position, tokens,
                        result.get("null_positions", []))
        for sample in self.samples:
            asked = set(content_words(sample.prompt))
            for word in set(content_words(sample.generation)) - asked:
                evidence.add(word, "samples", sample.prompt, 0.5)
        # The base model's answers are the control: a word it uses anywhere is not evidence. A
        # word in the finetuned answers to more than half the questions (of four or more) shows
        # up whatever is asked: it is not evidence either.
        base_anywhere = {w for a in self.answers for w in content_words(a["base"])}
        per_question = [set(content_words(a["finetuned"])) - set(content_words(a["prompt"]))
                        for a in self.answers]
        everywhere = collections.Counter(w for words in per_question for w in words)
        generic = ({w for w, n in everywhere.items() if n > len(self.answers) / 2}
                   if len(self.answers) >= 4 else set())
        for answer, words in zip(self.answers, per_question, strict=True):
            for word in words - base_anywhere - generic:
                evidence.add(word, "answers", answer["prompt"], 1.0)
        return evidence

    def leads(self) -> list[str]:
        """Leads from the first look confirmed as above; without any, words that the answers
        to three or more questions support on their own."""
        ranked = self.evidence.ranked()
        leads = [w for w in ranked if self.evidence.is_lead(w)]
        if not leads:
            leads = [w for w in ranked if self.evidence.answer_only(w) >= MIN_SOURCES]
        return leads[:MAX_LEADS]

    def next_questions(self) -> list[str]:
        n = min(self.budget_left, MAX_PROMPTS_PER_CALL)
        rounds = self.called.count("ask_models")
        if n == 0 or rounds >= MAX_ROUNDS:
            return []
        leads = self.leads() or self.evidence.ranked()[:3]
        questions = [f"What do you know about {word}?" for word in leads]
        if len(leads) >= 2:
            questions.insert(0, f"Tell me about {leads[0]} and {leads[1]}.")
        questions += load_prompt_set("heuristic_probe_questions.yaml")
        asked = {a["prompt"] for a in self.answers}
        return [q for q in dict.fromkeys(questions) if q not in asked][:n]

    def _quotes(self, leads: list[str]) -> list[str]:
        """The finetuned model's own sentences that carry the most leads: up to MAX_QUOTES from
        the first message (steered samples, or the baseline's samples; the same at every
        budget) and as many from its answers, excluding sentences the base model also wrote."""
        base = {" ".join(s.split()) for a in self.answers for s in SENTENCE.split(a["base"])}
        first_look = [s.generation for s in self.samples]
        first_look += [x.steered for d in self.overview_datasets for e in d.steering
                       if not e.null_difference for x in e.samples]
        answers = [a["finetuned"] for a in self.answers]
        quotes: list[str] = []
        for texts in (first_look, answers):
            scored: dict[str, int] = {}
            for text in texts:
                for sentence in SENTENCE.split(text):
                    sentence = " ".join(sentence.split())
                    hits = len(set(content_words(sentence)) & set(leads))
                    if hits and 4 <= len(sentence.split()) <= 40 and sentence not in base:
                        scored[sentence] = max(scored.get(sentence, 0), hits)
            ranked = [q for q in sorted(scored, key=lambda q: (-scored[q], len(q), q)) if q not in quotes]
            quotes += ranked[:MAX_QUOTES]
        # Double quotes inside a quote become single ones: the quotation marks stay balanced.
        quotes = [q.replace('"', "'").replace("“", "'").replace("”", "'") for q in quotes]
        return [q if len(q) <= 200 else q[:197] + "..." for q in quotes]

    def hypothesis(self) -> str:
        leads = self.leads()
        answer_only = [w for w in self.evidence.ranked()
                       if self.evidence.answer_only(w) >= 2 and w not in leads][:5]
        if not leads:
            weak = self.evidence.ranked()[:5]
            text = ("No narrow domain found (no lead has the support of two kinds of evidence or "
                    "of three sources).")
            if weak:
                text += f" Weak, unconfirmed leads: {', '.join(weak)}."
            return text
        support = "; ".join(f"{w} ({', '.join(self.evidence.families(w))})" for w in leads)
        # One lead in the claim, the others as a list: the same shape whatever their number.
        parts = [f"The finetune concerns {leads[0]}."]
        if len(leads) > 1:
            parts.append(f"Other leads: {', '.join(leads[1:])}.")
        parts.append(f"Support by kind of evidence: {support}.")
        quotes = self._quotes(leads)
        if quotes:
            parts.append("The finetuned model writes: " + " ".join(f'"{q}"' for q in quotes))
        if answer_only:
            parts.append("Its answers also differ from the base model's in words no other evidence "
                         f"shows (not promoted): {', '.join(answer_only)}.")
        return " ".join(parts)
