"""The agent's toolbox: typed functions whose docstrings are their descriptions.

The JSON schema an LLM sees for a tool is generated from the function's signature (pydantic),
never written by hand. Every call goes through `Toolbox.call`, which validates the arguments,
charges model interactions against the budget and turns any failure into an error result
that names the problem, so a bad tool call never crashes a run.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tools.errors import AdlError, ToolInputError, WorkerRequestError
from tools.validation import validation_problems
from tools.worker.client import WorkerClient
from tools.worker.schema import (
    MAX_READOUT_K,
    ChatRequest,
    GenerateSteeredRequest,
    ReadoutMethod,
    ReadoutRequest,
    SteeredSamplesRequest,
)

log = logging.getLogger(__name__)
AgentKind = Literal["adl", "blackbox"]
AGENT_KINDS: tuple[AgentKind, ...] = get_args(AgentKind)
HypothesisStatus = Literal["open", "supported", "rejected"]
DEFAULT_DATASET = "dataset_1"


# The reference's overview cuts every sample to 128 characters (`max_sample_chars`); the
# blackbox agent's first look is cut the same way. get_steered_samples shows them whole.
OVERVIEW_SAMPLE_CHARS = 128


class AskSettings(BaseModel):
    """How ask_models samples both models. The defaults are the reference toolkit's ask_model
    settings (configs/diffing/evaluation.yaml: temperature 0.8, 1024 new tokens, sampling)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.8, ge=0.0, le=2.0, description="0 decodes greedily.")
    max_new_tokens: int = Field(1024, ge=1, le=1024)
    seed: int = Field(0, description="Seed of the first call; each call adds the interactions "
                      "used so far, so repeated questions get fresh samples.")


class ToolSpec(BaseModel):
    """What a provider shows the LLM: name, description and the generated JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]


class ToolResult(BaseModel):
    """The outcome of one tool call, success or error, as recorded in the transcript."""

    name: str
    ok: bool
    content: Any = None
    error: str | None = None
    error_fields: list[str] = Field(default_factory=list)
    error_type: str | None = Field(None, description="Exception class of a failed call.")
    interactions: int = Field(0, description="Model interactions charged to the budget.")
    ends_run: bool = False

    def text(self, budgets_left: dict[str, Any] | None = None) -> str:
        """The result as the LLM reads it (compact JSON), with the budgets that remain."""
        if self.ok:
            body = dict(self.content) if isinstance(self.content, dict) else {"result": self.content}
        else:
            body = {"error": self.error, "fields": self.error_fields}
        if budgets_left is not None:
            body["budgets_left"] = budgets_left
        return json.dumps(body, ensure_ascii=False)


class Hypothesis(BaseModel):
    id: int
    description: str
    status: HypothesisStatus = "open"
    notes: list[str] = Field(default_factory=list)


class BudgetExhaustedError(ToolInputError):
    """The call would use more model interactions than are left."""


@dataclass(frozen=True)
class ToolMarker:
    """What `@tool` records on a Toolbox method: its cost in model interactions (from its
    arguments), whether it ends the run, and the agent kinds that may use it."""

    cost: Callable[[dict[str, Any]], int] | None = None
    ends_run: bool = False
    agents: tuple[AgentKind, ...] = AGENT_KINDS


def tool(cost: Callable[[dict[str, Any]], int] | None = None, ends_run: bool = False,
         agents: tuple[AgentKind, ...] = AGENT_KINDS) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a Toolbox method as a tool; `cost` maps its arguments to model interactions,
    `agents`: the agent kinds that may use it (default: every kind)."""

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        function.__adl_tool__ = ToolMarker(cost, ends_run, agents)  # type: ignore[attr-defined]
        return function

    return mark


def _marker(function: Any) -> ToolMarker | None:
    marker = getattr(function, "__adl_tool__", None)
    return marker if isinstance(marker, ToolMarker) else None


def arguments_model(function: Callable[..., Any]) -> type[BaseModel]:
    """A pydantic model of a function's parameters (annotations, defaults, Field metadata)."""
    hints = get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self":
            continue
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (hints[name], default)
    model = create_model(f"{function.__name__}_arguments", __config__={"extra": "forbid"}, **fields)
    return model


def _tokens(scores: list[Any]) -> list[str]:
    return [f"{s.token!r} {s.probability:.3f}" for s in scores]


Prompts = Annotated[list[str], Field(min_length=1, description="User messages, one per question.")]
Dataset = Annotated[str, Field(description="Anonymized dataset name, as in the overview.")]
Position = Annotated[int, Field(description="Token position (0 = first token of the text).")]


class Toolbox:
    """The tools of one agent run against one worker (HTTP or in-process). Each tool is a method
    marked with `@tool`, which names the agent kinds that may use it."""

    def __init__(self, client: WorkerClient, agent: AgentKind = "adl",
                 interaction_budget: int | None = None, ask: AskSettings | None = None) -> None:
        self.client = client
        self.agent = agent
        self.ask = ask or AskSettings()
        self.interaction_budget = interaction_budget
        self.interactions_used = 0
        self.hypotheses: list[Hypothesis] = []
        self.submitted: str | None = None
        self.generated_tokens = 0
        self._tools = {name: getattr(self, name) for name in self.tool_names(agent)}
        self._models = {name: arguments_model(method) for name, method in self._tools.items()}

    @classmethod
    def tool_names(cls, agent: AgentKind) -> list[str]:
        """The tools `agent` may use, in the order they are defined (a subclass's last)."""
        members: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            members.update(vars(klass))
        return [name for name, member in members.items()
                if (marker := _marker(member)) is not None and agent in marker.agents]

    # -- the tools ----------------------------------------------------------------------------

    @tool(cost=lambda args: len(args["prompts"]))
    def ask_models(self, prompts: Prompts) -> dict[str, Any]:
        """Ask the base model and the finetuned model the same questions (sampled; answers can
        differ between calls). Returns both answers per prompt. Costs 1 model interaction per
        prompt."""
        response = self.client.chat(ChatRequest(
            prompts=prompts, max_new_tokens=self.ask.max_new_tokens,
            temperature=self.ask.temperature, seed=self.ask.seed + self.interactions_used))
        self.generated_tokens += response.generated_tokens
        return {"answers": [{"prompt": r.prompt, "base": r.replies["base"],
                             "finetuned": r.replies["finetuned"]} for r in response.replies]}

    @tool(agents=("adl",))
    def get_token_readouts(
        self,
        layer: Annotated[int | None, Field(description="Block index; default: the overview's layer.")] = None,
        positions: Annotated[list[int] | None, Field(description="Default: all positions.")] = None,
        method: Annotated[ReadoutMethod, Field(description="logit_lens, logit_lens_suppressed "
                                               "(tokens that top any direction removed) or patchscope.")] = "logit_lens_suppressed",
        k: Annotated[int, Field(ge=1, le=MAX_READOUT_K, description="Tokens per position.")] = 20,
        dataset: Dataset = DEFAULT_DATASET,
    ) -> dict[str, Any]:
        """Top tokens of the activation difference (finetuned minus base, averaged over the first
        tokens of unrelated text) per token position, read out with the logit lens or Patchscope.
        Free (no model interactions)."""
        response = self.client.readouts(ReadoutRequest(
            dataset=dataset, layer=layer, positions=positions, method=method, k=k))
        result: dict[str, Any] = {
            "dataset": response.dataset, "layer": response.layer, "method": response.method,
            "positions": {str(p.position): _tokens(p.tokens) for p in response.positions},
        }
        if response.note:
            result["note"] = response.note
        if response.null_positions:
            result["null_positions"] = response.null_positions
        return result

    @tool(agents=("adl",))
    def get_steered_samples(
        self,
        position: Position,
        prompts: Annotated[list[str] | None, Field(description="Cached steering prompts; default: all.")] = None,
        n: Annotated[int, Field(ge=1, description="Samples per prompt.")] = 1,
        dataset: Dataset = DEFAULT_DATASET,
    ) -> dict[str, Any]:
        """Precomputed samples of the finetuned model steered with the activation difference at
        one position (at the strongest strength that stays coherent), next to the unsteered
        sample of the same prompt that the overview shows. Free (no model interactions)."""
        response = self.client.steered_samples(SteeredSamplesRequest(
            dataset=dataset, position=position, prompts=prompts, n=n))
        # Unsteered samples beyond the overview's one per prompt would be free information the
        # baseline does not get (its unsteered answers cost interactions): they are not shown.
        for sample in response.samples:
            sample.unsteered = (sample.unsteered or [])[:1]
        return response.model_dump(exclude_none=True,
                                   exclude=None if response.null_difference else {"null_difference"})

    @tool(cost=lambda args: len(args["prompts"]) * args["n"], agents=("adl",))
    def generate_steered(
        self,
        position: Position,
        prompts: Prompts,
        n: Annotated[int, Field(ge=1, description="Samples per prompt.")] = 1,
        dataset: Dataset = DEFAULT_DATASET,
    ) -> dict[str, Any]:
        """Generate new steered samples of the finetuned model for your own prompts, steering
        with the activation difference at one position (unsteered answers come from ask_models,
        which charges for them). Costs 1 model interaction per steered sample (prompts x n)."""
        response = self.client.generate_steered(GenerateSteeredRequest(
            dataset=dataset, position=position, prompts=prompts, n=n))
        return response.model_dump(exclude_none=True, exclude={"null_difference"})  # (refused there)

    @tool()
    def add_hypothesis(self, description: Annotated[str, Field(min_length=1)]) -> dict[str, Any]:
        """Write a hypothesis about what the finetune did on your board. Returns its id."""
        hypothesis = Hypothesis(id=len(self.hypotheses) + 1, description=description)
        self.hypotheses.append(hypothesis)
        return hypothesis.model_dump()

    @tool()
    def update_hypothesis(
        self,
        hypothesis_id: int,
        status: HypothesisStatus,
        reasoning: Annotated[str, Field(min_length=1, description="Why the status changed.")],
    ) -> dict[str, Any]:
        """Mark a hypothesis open, supported or rejected, with your reasoning."""
        for hypothesis in self.hypotheses:
            if hypothesis.id == hypothesis_id:
                hypothesis.status = status
                hypothesis.notes.append(reasoning)
                return hypothesis.model_dump()
        raise ToolInputError(
            f"No hypothesis {hypothesis_id}; ids on the board: {[h.id for h in self.hypotheses]}.",
            ["hypothesis_id"])

    @tool()
    def list_hypotheses(self) -> dict[str, Any]:
        """Every hypothesis on the board with its status and notes."""
        return {"hypotheses": [h.model_dump() for h in self.hypotheses]}

    @tool(ends_run=True)
    def submit_hypothesis(
        self, description: Annotated[str, Field(min_length=1, description="Your final answer: "
                                                "what the finetune did, with details.")],
    ) -> dict[str, Any]:
        """Submit your final description of what the finetune did (or that it has no narrow
        domain, or that the evidence is inconclusive). This ends the investigation."""
        self.submitted = description
        return {"submitted": description}

    # -- calling -------------------------------------------------------------------------------

    @property
    def interactions_left(self) -> int | None:
        if self.interaction_budget is None:
            return None
        return self.interaction_budget - self.interactions_used

    def specs(self) -> list[ToolSpec]:
        """The tools of this agent with generated JSON schemas."""
        return [
            ToolSpec(name=name, description=" ".join((inspect.getdoc(method) or name).split()),
                     parameters=self._models[name].model_json_schema())
            for name, method in self._tools.items()
        ]

    def cost(self, name: str, arguments: dict[str, Any]) -> int:
        marker = _marker(self._tools[name])
        return int(marker.cost(arguments)) if marker is not None and marker.cost else 0

    def call(self, name: str, arguments: dict[str, Any] | str | None) -> ToolResult:
        """Validate, charge and run one tool call; any failure becomes an error result."""
        if name not in self._tools:
            return ToolResult(name=name, ok=False, error=f"Unknown tool {name!r}; available: "
                              f"{', '.join(self._tools)}.")
        try:
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError as exc:
                    raise ToolInputError(f"The arguments are not valid JSON: {exc}.") from exc
            if not isinstance(arguments, dict | None):
                raise ToolInputError("The arguments must be a JSON object.")
            try:
                parsed = self._models[name].model_validate(arguments or {})
            except ValidationError as exc:
                problems, fields = validation_problems(exc)
                raise ToolInputError(f"Invalid arguments for {name}: {problems}", fields) from exc
            values = parsed.model_dump()
            cost = self.cost(name, values)
            left = self.interactions_left
            if left is not None and cost > left:
                raise BudgetExhaustedError(
                    f"{name} needs {cost} model interactions but only {left} are left in the "
                    "budget. Use fewer prompts or samples, or submit your hypothesis.", [])
            content = self._tools[name](**values)
        except ToolInputError as exc:
            return ToolResult(name=name, ok=False, error=str(exc), error_fields=exc.fields,
                              error_type=type(exc).__name__)
        except WorkerRequestError as exc:
            return ToolResult(name=name, ok=False, error=f"{type(exc).__name__}: {exc}",
                              error_fields=exc.fields, error_type=f"WorkerRequestError:{exc.error_type}")
        except AdlError as exc:
            return ToolResult(name=name, ok=False, error=f"{type(exc).__name__}: {exc}",
                              error_type=type(exc).__name__)
        except ValidationError as exc:  # a request the worker schema refuses
            problems, fields = validation_problems(exc)
            return ToolResult(name=name, ok=False, error=f"Invalid arguments for {name}: {problems}",
                              error_fields=fields, error_type="ValidationError")
        except Exception as exc:
            log.exception("tool %s failed", name)
            return ToolResult(name=name, ok=False, error=f"The tool failed: {type(exc).__name__}: {exc}",
                              error_type=type(exc).__name__)
        self.interactions_used += cost
        marker = _marker(self._tools[name])
        ends = marker is not None and marker.ends_run
        return ToolResult(name=name, ok=True, content=content, interactions=cost, ends_run=ends)

    def overview(self) -> dict[str, Any]:
        """What the ADL agent sees first: per dataset and position the top tokens of both
        readouts and one steered vs unsteered sample per steering prompt, cut to
        OVERVIEW_SAMPLE_CHARS as the reference's overview (datasets anonymized)."""
        overview = self.client.overview()
        return {
            "available_layers": overview.available_layers,
            "positions": overview.n_positions,
            "datasets": [{
                "dataset": d.dataset, "layer": d.layer, "model_layers": d.n_layers,
                "logit_lens_suppressed": {str(p.position): [t.token for t in p.tokens] for p in d.positions},
                "patchscope": {str(p.position): [t.token for t in p.tokens] for p in d.patchscope},
                **({"patchscope_note": d.patchscope_note} if d.patchscope_note else {}),
                **({"null_positions": d.null_positions, "difference_note": d.difference_note}
                   if d.null_positions else {}),
                "steering": [{
                    "position": s.position,
                    **({"null_difference": True} if s.null_difference else {}),
                    "samples": [{"prompt": x.prompt, "strength": x.strength,
                                 "steered": x.steered[0][:OVERVIEW_SAMPLE_CHARS],
                                 "unsteered": (x.unsteered or [""])[0][:OVERVIEW_SAMPLE_CHARS]}
                                for x in s.samples],
                } for s in d.steering],
            } for d in overview.datasets],
        }

    def finetuned_samples(self) -> dict[str, Any]:
        """What the blackbox agent sees first (the reference's baseline): every distinct
        unsteered sample of the finetuned model that the ADL overview shows, with its prompt."""
        overview = self.client.overview()
        examples = dict.fromkeys(
            (x.prompt, text) for d in overview.datasets for s in d.steering for x in s.samples
            for text in (x.unsteered or [])[:1])
        return {"examples": [{"prompt": prompt, "generation": text[:OVERVIEW_SAMPLE_CHARS]}
                             for prompt, text in examples]}
