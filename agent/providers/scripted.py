"""A scripted provider for tests: replays a fixed list of completions (or raises errors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.errors import ProviderError
from agent.providers.base import ChatTurn, Completion
from tools.toolbox import ToolSpec

Step = Completion | Exception | Callable[[list[ChatTurn], list[ToolSpec]], Completion]


class ScriptedProvider:
    """Returns the scripted steps in order; a callable step sees the conversation so far."""

    is_llm = False

    def __init__(self, steps: Sequence[Step], model: str = "scripted") -> None:
        self.steps = list(steps)
        self.model = model
        self.name = f"scripted:{model}"
        self.seen: list[list[ChatTurn]] = []
        self.seen_tools: list[list[str]] = []

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int = 2048) -> Completion:
        self.seen.append(list(messages))
        self.seen_tools.append([t.name for t in tools])
        if not self.steps:
            raise ProviderError("The script has no more steps.")
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(messages, tools)
        return step
