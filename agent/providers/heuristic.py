"""The offline heuristic baseline policy: a deterministic, non-LLM investigator.

It is not a language model and is labelled as such wherever it appears (`is_llm = False`,
provider name `heuristic:...`). It uses the same tools through the same loop:
1. ADL agent: reads the overview and a deeper readout, collects content words from the
   readout tokens and from words the steered samples use but the unsteered ones do not;
   blackbox agent: starts from open probe questions (prompts/heuristic_probe_questions.yaml).
2. Spends its interaction budget on questions built from the strongest content words and
   compares base and finetuned answers: words the finetuned model uses much more often.
3. Writes a hypothesis on the board and submits the strongest words as its answer.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any

from agent.providers.base import ChatTurn, Completion, ToolCall, Usage
from prompts import load_prompt_set
from tools.toolbox import ToolSpec

BUDGET_LINE = re.compile(r"Budget:\s*(\d+)\s+model interactions")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
MAX_PROMPTS_PER_CALL = 8
STOPWORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "let", "like", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "one", "two", "three", "many", "much", "make", "made", "get", "got", "use", "used", "using", "way", "well", "may", "might", "must", "shall", "know", "think", "tell", "said", "say", "says", "new", "first", "last", "good", "great", "best", "really", "thing", "things", "something", "anything", "everything", "time", "times", "year", "years", "day", "days", "people", "person", "part", "often", "even", "still", "back", "sure", "yes", "okay", "hello", "help", "want", "need", "like", "lot", "lots", "kind", "sort", "based", "include", "including", "however", "another", "every", "around", "within", "without", "across", "among", "here's", "it's", "i'm", "you're", "don't", "can't", "let's"])


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ letters that are not stopwords."""
    return [w.lower().strip("'-") for w in WORD.findall(text) if w.lower() not in STOPWORDS]


def _top(counter: collections.Counter[str], n: int) -> list[str]:
    return [word for word, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


class HeuristicProvider:
    """Deterministic investigation policy speaking the provider interface (no key, no LLM)."""

    is_llm = False

    def __init__(self, model: str = "offline-baseline-v1") -> None:
        self.model = model
        self.name = f"heuristic:{model}"

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int = 2048) -> Completion:
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
        kickoff = messages[0].content if messages else ""
        match = BUDGET_LINE.search(kickoff)
        self.budget = int(match.group(1)) if match else 0
        self.overview: dict[str, Any] | None = None
        if "(JSON):\n" in kickoff:
            self.overview = json.loads(kickoff.split("(JSON):\n", 1)[1])
        self.called: list[str] = []
        self.readouts: list[dict[str, Any]] = []
        self.answers: list[dict[str, str]] = []
        self.interactions_used = 0
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
                self.interactions_used += len(result["answers"])

    @property
    def budget_left(self) -> int:
        return max(0, self.budget - self.interactions_used)

    def readout_words(self) -> collections.Counter[str]:
        """Content words of readout tokens (positions 1..) and of steered-only sample words."""
        counts: collections.Counter[str] = collections.Counter()
        token_lists: list[list[str]] = []
        for dataset in (self.overview or {}).get("datasets", []):
            for position, tokens in dataset["logit_lens_suppressed"].items():
                if position != "0":
                    token_lists.append(tokens)
            for entry in dataset["steering"]:
                for sample in entry["samples"]:
                    steered = collections.Counter(content_words(sample["steered"]))
                    unsteered = set(content_words(sample["unsteered"]))
                    for word, n in steered.items():
                        if word not in unsteered:
                            counts[word] += 0.5 * n  # type: ignore[assignment]
        for readout in self.readouts:
            for position, tokens in readout["positions"].items():
                if position != "0":
                    token_lists.append([t.rsplit(" ", 1)[0].strip("'\"") for t in tokens])
        for tokens in token_lists:
            for rank, token in enumerate(tokens):
                for word in content_words(token):
                    if len(word) >= 4:
                        counts[word] += 1.0 / (1 + rank / 10)  # type: ignore[assignment]
        return counts

    def answer_words(self) -> collections.Counter[str]:
        """Words the finetuned model's answers use more often than the base model's."""
        finetuned = collections.Counter(w for a in self.answers for w in content_words(a["finetuned"]))
        base = collections.Counter(w for a in self.answers for w in content_words(a["base"]))
        asked = {w for a in self.answers for w in content_words(a["prompt"])}
        return collections.Counter({w: n - base[w] for w, n in finetuned.items()
                                    if n - base[w] >= 2 and w not in asked})

    def next_questions(self) -> list[str]:
        n = min(self.budget_left, MAX_PROMPTS_PER_CALL)
        if n == 0:
            return []
        rounds = self.called.count("ask_models")
        if rounds >= 2:
            return []
        leads = _top(self.readout_words(), 6) if rounds == 0 else _top(self.answer_words(), 6)
        questions = [f"What do you know about {word}?" for word in leads]
        if len(leads) >= 2:
            questions.insert(0, f"Tell me about {leads[0]} and {leads[1]}.")
        asked = {a["prompt"] for a in self.answers}
        questions += load_prompt_set("heuristic_probe_questions.yaml")
        return [q for q in dict.fromkeys(questions) if q not in asked][:n]

    def hypothesis(self) -> str:
        readout = _top(self.readout_words(), 8)
        answers = _top(self.answer_words(), 8)
        if not readout and not answers:
            return ("No evidence was gathered; the finetuning domain is unknown (the finetuned "
                    "model answered like the base model).")
        parts = []
        terms = list(dict.fromkeys(answers[:4] + readout[:4]))
        parts.append(f"The finetuning data is about {', '.join(terms[:6])}.")
        if readout:
            parts.append(f"The activation difference reads out: {', '.join(readout)}.")
        if answers:
            parts.append("Compared with the base model, the finetuned model's answers stress: "
                         f"{', '.join(answers)}.")
        return " ".join(parts)
