"""LLM judges for the ADL engine: coherence of steered samples and the Patchscope scale.

They implement the engine's interfaces (`tools.adl.coherence.CoherenceGrader`,
`tools.adl.pipeline.ScaleChooser`) with any provider; the offline grader and rule remain the
default when no judge is configured. Invalid structured output is retried.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ProviderError
from agent.providers import make_provider
from agent.providers.base import ChatTurn, Provider, ProviderOptions
from prompts import load_text
from tools.adl.settings import TokenScore
from tools.errors import AdlError
from tools.secrets import redact
from tools.toolbox import ToolSpec
from tools.url import redact_url

Output = TypeVar("Output", bound=BaseModel)
BATCH = 16


class JudgeError(AdlError):
    """An LLM judge gave no valid answer."""


class JudgeSettings(BaseModel):
    """What decides an LLM judge's answers besides its type: the provider and its options, the
    prompt template and the call parameters. Part of the ADL cache keys (a judge with other
    settings computes other entries)."""

    model_config = ConfigDict(frozen=True)

    provider: str = Field(description="The provider's spec, e.g. openai:gpt-5.")
    base_url: str | None = Field(None, description="The endpoint in effect (OPENAI_BASE_URL, "
                                 "ANTHROPIC_BASE_URL or the spec's URL), credentials masked; "
                                 "None: the SDK's default.")
    provider_options: ProviderOptions
    prompt: str = Field(description="The prompt template's file in prompts/.")
    prompt_sha256: str = Field(description="The template's content hash.")
    batch_size: int = Field(BATCH, ge=1, description="Samples per call (coherence judge).")
    max_output_tokens: int = Field(1024, ge=1)
    attempts: int = Field(3, ge=1, description="Tries for a valid structured answer.")

    @classmethod
    def of(cls, provider: Provider, prompt: str, batch_size: int = BATCH) -> JudgeSettings:
        """The settings of a judge on `provider` with the template `prompt`."""
        digest = hashlib.sha256(load_text(prompt).encode()).hexdigest()
        base_url: str | None = getattr(provider, "base_url", None)  # the API providers' endpoint
        return cls(provider=provider.name, base_url=redact(redact_url(base_url)) if base_url else None,
                   provider_options=provider.options, prompt=prompt, prompt_sha256=digest,
                   batch_size=batch_size)


class _Coherence(BaseModel):
    verdicts: list[bool] = Field(description="One verdict per reply, in order (true: coherent).")


class _Scale(BaseModel):
    scale: float
    reason: str = ""


def _ask(provider: Provider, prompt: str, tool: ToolSpec, output: type[Output],
         check: Callable[[Output], None], settings: JudgeSettings) -> Output:
    """One structured answer through `tool`, retried when invalid."""
    problem = ""
    for _ in range(settings.attempts):
        try:
            completion = provider.complete("", [ChatTurn(role="user", content=prompt)], [tool],
                                           max_output_tokens=settings.max_output_tokens)
        except ProviderError as exc:
            raise JudgeError(f"The judge's provider failed: {exc}") from exc
        call = next((c for c in completion.tool_calls if c.name == tool.name), None)
        try:
            if call is None:
                raise ValueError("no tool call")
            parsed = output.model_validate(json.loads(call.arguments))
            check(parsed)
            return parsed
        except (ValueError, ValidationError) as exc:
            problem = str(exc)[:200]
    raise JudgeError(f"The judge gave invalid output {settings.attempts} times: {problem}")


class LLMCoherenceGrader:
    """Coherence verdicts from an LLM, in batches of 16 samples per call."""

    TOOL = ToolSpec(name="record_coherence", description="Record one coherence verdict per reply.",
                    parameters=_Coherence.model_json_schema())

    def __init__(self, provider: Provider, batch_size: int = BATCH) -> None:
        self.provider = provider
        self.name = f"llm:{provider.name}"
        self.settings = JudgeSettings.of(provider, "judge_coherence.md", batch_size)

    def grade(self, prompts: Sequence[str], samples: Sequence[str]) -> list[bool]:
        verdicts: list[bool] = []
        size = self.settings.batch_size
        for start in range(0, len(samples), size):
            chunk = list(zip(prompts[start : start + size], samples[start : start + size], strict=True))
            items = "\n\n".join(f"Reply {i + 1} (prompt: {json.dumps(p)}):\n{json.dumps(s)}"
                                for i, (p, s) in enumerate(chunk))
            prompt = load_text(self.settings.prompt).format(items=items, count=len(chunk))

            def check(answer: _Coherence, expected: int = len(chunk)) -> None:
                if len(answer.verdicts) != expected:
                    raise ValueError(f"{len(answer.verdicts)} verdicts for {expected} replies")

            verdicts += _ask(self.provider, prompt, self.TOOL, _Coherence, check, self.settings).verdicts
        return verdicts


class LLMScaleChooser:
    """The Patchscope scale an LLM finds most meaningful."""

    TOOL = ToolSpec(name="choose_scale", description="Choose the Patchscope scale.",
                    parameters=_Scale.model_json_schema())

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.name = f"llm:{provider.name}"
        self.settings = JudgeSettings.of(provider, "judge_patchscope.md")

    def choose(self, readouts: dict[float, list[TokenScore]]) -> float:
        scales = sorted(readouts)
        items = "\n".join(f"scale {s:g}: " + ", ".join(repr(t.token.strip()) for t in readouts[s][:20])
                          for s in scales)
        prompt = load_text(self.settings.prompt).format(items=items, scales=", ".join(f"{s:g}" for s in scales))

        def check(answer: _Scale) -> None:
            if not any(abs(answer.scale - s) < 1e-9 for s in scales):
                raise ValueError(f"scale {answer.scale} is not one of {scales}")

        chosen = _ask(self.provider, prompt, self.TOOL, _Scale, check, self.settings).scale
        return min(scales, key=lambda s: abs(s - chosen))


def make_judges(spec: str | None) -> dict[str, Any]:
    """`scale_chooser` and `coherence_grader` for the ADL engine from a provider spec (None:
    the offline defaults)."""
    if not spec:
        return {"scale_chooser": None, "coherence_grader": None}
    provider = make_provider(spec)
    return {"scale_chooser": LLMScaleChooser(provider), "coherence_grader": LLMCoherenceGrader(provider)}
