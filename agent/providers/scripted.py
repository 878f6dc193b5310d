"""A scripted provider for tests: replays a fixed list of completions (or raises errors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.errors import ProviderError
from agent.providers.base import ChatTurn, Completion, ProviderOptions
from tools.toolbox import ToolSpec

Step = Completion | Exception | Callable[[list[ChatTurn], list[ToolSpec]], Completion]


class ScriptedProvider:
    """Returns the scripted steps in order; a callable step sees the conversation so far."""

    is_llm = False

    def __init__(self, steps: Sequence[Step], model: str = "scripted",
                 options: ProviderOptions | None = None) -> None:
        self.steps = list(steps)
        self.model = model
        self.name = f"scripted:{model}"
        self.options = options or ProviderOptions()
        self.seen: list[list[ChatTurn]] = []
        self.seen_tools: list[list[str]] = []
        self.seen_limits: list[int] = []  # the output limit of each call

    @property
    def context_window(self) -> int | None:
        """The options' context window (a script has no model table entry)."""
        return self.options.context_window

    def complete(self, system: str, messages: list[ChatTurn], tools: list[ToolSpec],
                 max_output_tokens: int | None = None) -> Completion:
        self.seen.append(list(messages))
        self.seen_tools.append([t.name for t in tools])
        self.seen_limits.append(max_output_tokens or self.options.max_output_tokens)
        if not self.steps:
            raise ProviderError("The script has no more steps.")
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(messages, tools)
        return step
