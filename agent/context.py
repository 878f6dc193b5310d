"""Keeping an agent's conversation inside the model's context window.

Open models served locally (vLLM, llama.cpp) often have 8k-32k token windows, and a run at the
paper's budgets (100 turns) overflows them. Before each request the loop asks `ContextKeeper`
whether the conversation fits; when it would not, older tool results are replaced by a short
note (the overview, the hypothesis board's tool results and the last turns stay). Token counts
are estimated from characters until the server reports usage; each reported prompt size
recalibrates the estimate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel

from agent.providers.base import ChatTurn
from tools.errors import AdlError
from tools.toolbox import ToolSpec

# About 4 characters per token for English and JSON; start a little pessimistic (3.5) until the
# server's usage says otherwise.
INITIAL_TOKENS_PER_CHAR = 1 / 3.5
MIN_TOKENS_PER_CHAR = 1 / 6
KEEP_LAST_TURNS = 6
# Results of these tools are the hypothesis board: small, and the agent's own notes.
BOARD_TOOLS = frozenset({"add_hypothesis", "update_hypothesis", "list_hypotheses"})
ELIDED_PREFIX = "[result elided"
# The request's framing (roles, tool schema wrappers) beyond the characters counted.
OVERHEAD_TOKENS = 64


class ContextFullError(AdlError):
    """The conversation does not fit the context window even after compaction."""


class Compaction(BaseModel):
    """One compaction: how many tool results were elided and the estimated prompt before/after."""

    elided: int
    tokens_before: int
    tokens_after: int
    window: int
    reason: str


class ContextKeeper:
    """Estimates the prompt size of a conversation and compacts it to fit `window` tokens with
    room for `max_output_tokens`; `window=None` (unknown) never compacts before a request."""

    def __init__(self, window: int | None, max_output_tokens: int,
                 keep_last_turns: int = KEEP_LAST_TURNS) -> None:
        self.window = window
        self.max_output_tokens = max_output_tokens
        self.keep_last_turns = keep_last_turns
        self.tokens_per_char = INITIAL_TOKENS_PER_CHAR
        self.compactions = 0

    @staticmethod
    def characters(system: str, messages: Sequence[ChatTurn], tools: Sequence[ToolSpec]) -> int:
        """Characters of everything a request carries (system, turns, tool calls, tool schemas)."""
        size = len(system) + sum(len(json.dumps(t.parameters)) + len(t.description) + len(t.name)
                                 for t in tools)
        for turn in messages:
            size += len(turn.content) + sum(len(c.name) + len(c.arguments) for c in turn.tool_calls)
        return size

    def estimate(self, system: str, messages: Sequence[ChatTurn], tools: Sequence[ToolSpec]) -> int:
        """Estimated prompt tokens of this request."""
        return int(self.characters(system, messages, tools) * self.tokens_per_char) + OVERHEAD_TOKENS

    def calibrate(self, characters: int, reported_input_tokens: int) -> None:
        """Learn tokens per character from a request of `characters` whose usage the server
        reported (never below one token per 6 characters: a proxy that reports only uncached
        prompt tokens would report too few)."""
        if characters > 0 and reported_input_tokens > 0:
            self.tokens_per_char = max(reported_input_tokens / characters, MIN_TOKENS_PER_CHAR)

    def learn_overflow(self, estimated: int, requested: int | None) -> None:
        """The server refused a prompt estimated at `estimated` tokens as too long: scale the
        estimate to the size it reported (or by a quarter when it said none)."""
        factor = requested / estimated if requested and estimated else 1.25
        self.tokens_per_char *= max(factor, 1.05)

    def budget(self) -> int | None:
        """Prompt tokens a request may use: the window less the output limit."""
        return None if self.window is None else self.window - self.max_output_tokens

    def fits(self, system: str, messages: Sequence[ChatTurn], tools: Sequence[ToolSpec]) -> bool:
        budget = self.budget()
        return budget is None or self.estimate(system, messages, tools) <= budget

    def compact(self, system: str, messages: list[ChatTurn], tools: Sequence[ToolSpec],
                reason: str, force: bool = False) -> Compaction | None:
        """Elide older tool results (oldest first, keeping board results, the first message and
        the last turns) until the request fits; with `force`, elide every eligible one (the
        server refused the prompt). Edits `messages` in place; None when nothing could be
        elided."""
        before = self.estimate(system, messages, tools)
        budget = self.budget()
        elided = 0
        # Nothing after the last assistant turn is elided: the model has not seen those results.
        unseen = max((i for i, t in enumerate(messages) if t.role == "assistant"), default=0)
        for keep_last in (self.keep_last_turns, 2):
            last_kept = min(len(messages) - keep_last, unseen)
            for index, turn in enumerate(messages[:last_kept]):
                if not force and budget is not None and self.estimate(system, messages, tools) <= budget:
                    break
                if (index == 0 or turn.role != "tool" or turn.tool_name in BOARD_TOOLS
                        or turn.content.startswith(ELIDED_PREFIX)):
                    continue
                tokens = int(len(turn.content) * self.tokens_per_char)
                note = (f"{ELIDED_PREFIX} to fit the context window: about {tokens} tokens; call "
                        f"{turn.tool_name or 'the tool'} again if you need it]")
                messages[index] = turn.model_copy(update={"content": note})
                elided += 1
            fits = budget is not None and self.estimate(system, messages, tools) <= budget
            if (force and elided) or (not force and (budget is None or fits)):
                break
        if not elided:
            return None
        self.compactions += 1
        return Compaction(elided=elided, tokens_before=before,
                          tokens_after=self.estimate(system, messages, tools),
                          window=self.window or 0, reason=reason)
