"""Pydantic request, response and configuration models of the worker (its wire format)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from tools.adl.settings import AdlSettings, ReadoutMethod, SteeringSettings, TokenScore
from tools.corpus import CorpusSpec
from tools.model_spec import BackendName, LoadOptions, ModelPairSpec, Side

MAX_READOUT_K = 100
# Hard bounds of the wire format: every field is bounded so that no request costs far more
# than its size. The operator's `WorkerLimits` are checked against these in the service and
# are usually smaller.
MAX_SEED = 2**32 - 1
MAX_LAYER = 4096
MAX_POSITION = 4096
MAX_LIST_ITEMS = 256
MAX_TEXT_CHARS = 100_000
MAX_NAME_CHARS = 64
MAX_NEW_TOKENS_BOUND = 65_536
MAX_SAMPLES_BOUND = 64
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Sampling seed (0 .. 2**32 - 1).")]
DatasetName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
Prompt = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
Position = Annotated[int, Field(ge=0, le=MAX_POSITION)]


def check_prompts(prompts: list[str]) -> list[str]:
    """Refuse empty or whitespace-only prompts, naming the first one."""
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty")
    return prompts


class WorkerLimits(BaseModel):
    """What one request may ask for; larger requests are refused with a clear error."""

    max_prompts: int = Field(16, ge=1, description="Prompts per request.")
    max_prompt_chars: int = Field(4000, ge=1)
    max_new_tokens: int = Field(1024, ge=1, description="The reference's ask_model default.")
    max_samples: int = Field(8, ge=1, description="Samples per prompt for live steering.")
    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_pending_jobs: int = Field(256, ge=1, description="Queued model jobs before 503.")
    max_in_flight: int = Field(32, ge=1, description="Requests served at once (every route but "
                               "/health); more get 503 with Retry-After.")
    max_batch_prompts: int = Field(64, ge=1, description="Prompts merged into one generate call.")


class WorkerConfig(BaseModel):
    """Everything the worker needs: the pair, the datasets to diff on and the ADL settings."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field("pair", description="Operator-facing name (never shown to the agent).")
    pair: ModelPairSpec
    load: LoadOptions = LoadOptions()
    backend: BackendName = Field("bridge", description="How the pair runs: bridge (transformer_lens's "
                                 "TransformerBridge) or hf-hooks (PyTorch forward hooks on the HF "
                                 "modules; no transformer_lens needed). The two agree to float "
                                 "rounding (tests/test_backend.py).")
    datasets: list[CorpusSpec] = Field(default_factory=lambda: [CorpusSpec()], min_length=1)
    adl: AdlSettings = AdlSettings()
    steering: SteeringSettings = SteeringSettings()
    steering_prompts: list[str] | None = Field(
        None, description="The final samples' prompts. Default: the steering settings' final prompt set.")
    layer_control: ModelPairSpec | None = Field(
        None, description="A control pair on the same base (for example the base finetuned on "
        "generic text). When given, the primary layer is chosen per dataset by the contrast rule "
        "(tools/adl/pipeline.py `choose_primary_layer`) instead of `adl.primary_layer`.")
    steering_positions: list[int] | None = Field(None, description="Default: every position.")
    judge: str | None = Field(None, description="Provider spec of an LLM judge for the Patchscope "
                              "scale and steering coherence; default: the offline rule and grader.")
    limits: WorkerLimits = WorkerLimits()


class ChatRequest(BaseModel):
    """Chat replies from the base and/or finetuned model, one user turn per prompt."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    sides: list[Side] = Field(default_factory=lambda: ["base", "finetuned"], min_length=1,
                              max_length=2)
    max_new_tokens: int = Field(96, ge=1, le=MAX_NEW_TOKENS_BOUND)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: Seed = 0

    @field_validator("prompts")
    @classmethod
    def _no_empty_prompts(cls, prompts: list[str]) -> list[str]:
        return check_prompts(prompts)


class ChatReply(BaseModel):
    prompt: str
    replies: dict[str, str] = Field(description="Reply per side ('base', 'finetuned').")


class ChatResponse(BaseModel):
    replies: list[ChatReply]
    generated_tokens: int


class ReadoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    layer: int | None = Field(None, ge=0, le=MAX_LAYER,
                              description="Block index; default: the primary layer.")
    positions: list[Position] | None = Field(
        None, max_length=MAX_LIST_ITEMS,
        description="Default: every computed position. Duplicates are answered once.")
    method: ReadoutMethod = "logit_lens_suppressed"
    k: int = Field(20, ge=1, le=MAX_READOUT_K)


class PositionTokens(BaseModel):
    position: int
    tokens: list[TokenScore]
    patchscope_scale: float | None = None


class ReadoutResponse(BaseModel):
    dataset: str
    layer: int
    method: ReadoutMethod
    k: int
    positions: list[PositionTokens]
    note: str | None = None
    null_positions: list[int] = Field(default_factory=list, description="Shown positions whose "
                                      "difference is zero: their tokens are a zero vector's.")


class SteeredSamplesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    position: Position
    prompts: list[Prompt] | None = Field(None, max_length=MAX_LIST_ITEMS,
                                         description="Default: every cached steering prompt.")
    n: int = Field(1, ge=1, le=MAX_SAMPLES_BOUND)


class SteeredPrompt(BaseModel):
    prompt: str
    strength: float = Field(description="Steering strength in mean residual norms.")
    steered: list[str]
    unsteered: list[str] | None = Field(None, description="Cached samples only: live steering "
                                        "returns none (ask_models charges for unsteered answers).")


class SteeredSamplesResponse(BaseModel):
    dataset: str
    layer: int
    position: int
    samples: list[SteeredPrompt]
    note: str | None = None
    null_difference: bool = Field(False, description="The difference here is zero: steering adds "
                                  "nothing, the steered samples are unsteered ones.")


class GenerateSteeredRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    position: Position
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    n: int = Field(1, ge=1, le=MAX_SAMPLES_BOUND)
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_BOUND,
                                       description="Default: the steering setting.")
    seed: Seed = 0

    @field_validator("prompts")
    @classmethod
    def _no_empty_prompts(cls, prompts: list[str]) -> list[str]:
        return check_prompts(prompts)


class DatasetOverview(BaseModel):
    """What the ADL agent sees first about one (anonymized) dataset."""

    dataset: str
    layer: int
    n_layers: int
    positions: list[PositionTokens] = Field(description="Hub-suppressed logit-lens tokens.")
    patchscope: list[PositionTokens]
    patchscope_note: str | None = Field(None, description="Set when the layer is the model's last "
                                        "block: Patchscope there is the plain logit lens.")
    null_positions: list[int] = Field(default_factory=list, description="Positions whose "
                                      "difference at this layer is zero.")
    difference_note: str | None = Field(None, description="Set when some difference is zero.")
    steering: list[SteeredSamplesResponse]


class Overview(BaseModel):
    datasets: list[DatasetOverview]
    available_layers: list[int]
    n_positions: int
    steering_prompts: list[str]


class WorkerInfo(BaseModel):
    """Operator-facing state (not shown to the agent: it names the models)."""

    label: str
    base_model: str
    finetuned_model: str | None
    device: str
    dtype: str
    backend: BackendName | None = Field(None, description="The backend that runs the pair (the "
                                        "bridge falls back to hf-hooks where it cannot run it "
                                        "faithfully); None from a worker older than this field.")
    tokenizer: Side | None = Field(None, description="Whose tokenizer and chat template both models "
                                   "are asked with: the base's, or the finetune's where the base "
                                   "has no chat template; None from a worker older than this field.")
    notes: list[str] = Field(default_factory=list, description="What an operator should know: "
                             "the tokenizer chosen, an adapter that records another base, a "
                             "backend fallback, a dataset whose activation difference is zero.")
    datasets: dict[str, str] = Field(description="Anonymized name -> corpus description.")
    layers: list[int]
    n_positions: int
    queue_length: int
    jobs_done: int
    rss_bytes: int
    accelerator_bytes: int | None
    limits: WorkerLimits
    status: Literal["ready", "stopping"]


class ErrorBody(BaseModel):
    """The structured error every failing request returns."""

    type: str = Field(description="invalid_argument, unauthorized, busy, stopping, internal, ...")
    message: str
    fields: list[str] = Field(default_factory=list, description="Request fields at fault.")


class ErrorResponse(BaseModel):
    error: ErrorBody
