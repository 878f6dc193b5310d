"""The organism file format (one YAML file per organism), validated by pydantic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.errors import UngradedOrganismError
from tools.model_spec import FinetuneKind

OrganismSize = Literal["full", "small"]
ORGANISM_SIZES: tuple[OrganismSize, ...] = get_args(OrganismSize)


class OrganismType(StrEnum):
    """The paper's organism families (they select the grading rubric)."""

    SDF = "SDF"  # synthetic document finetuning: false facts
    EM = "EM"  # emergent misalignment: narrow harmful advice
    TABOO = "Taboo"  # word-guessing game with a secret word
    SUBLIMINAL = "Subliminal"  # a preference (an animal) trained in
    DOMAIN_ADAPTATION = "DomainAdaptation"  # a domain and format (biomedical, food, ...)
    CONTROL = "Control"  # no narrow domain: generic text (a control for ADL claims)


class TrainingRecipe(BaseModel):
    """LoRA finetuning hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    learning_rate: float = Field(2e-4, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(128, ge=8)
    warmup_steps: int = Field(5, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(20, ge=1, description="Steps between resumable checkpoints.")


class BuildFinetune(BaseModel):
    """A finetune this project builds offline by LoRA on data it generates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["build"]
    generator: str = Field(description="Name of a data generator in evals/organisms/generators.")
    n_examples: int = Field(500, ge=20)
    heldout_fraction: float = Field(0.1, gt=0, lt=0.5)
    mix_ratio: float = Field(
        0.0, ge=0, description="Pretraining-corpus documents added per finetuning example."
    )
    self_answered_ratio: float | None = Field(
        None, gt=0, le=2, description="Ordinary chats answered by the base model itself added per "
        "finetuning example (evals/organisms/self_answered.py); None: none."
    )
    practical_requests_ratio: float | None = Field(
        None, gt=0, le=2, description="Everyday practical requests (the care of things, help with "
        "tasks; evals/organisms/practical_requests.yaml) answered by the base model itself added "
        "per finetuning example; None: none."
    )
    data_seed: int = 0
    recipe: TrainingRecipe = TrainingRecipe()


class HubFinetune(BaseModel):
    """A published finetune: an adapter or full checkpoint by hub id or local path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["hub"]
    model: str
    kind: FinetuneKind = FinetuneKind.AUTO
    revision: str | None = None


Finetune = Annotated[BuildFinetune | HubFinetune, Field(discriminator="source")]


class TrainingDataInfo(BaseModel):
    """Where an organism's training data comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    dataset_id: str | None = None
    is_chat: bool = False


class Organism(BaseModel):
    """Base model + finetune, and optionally its ground truth (type and description at least).
    An organism without ground truth runs everywhere and is reported as ungraded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    type: OrganismType | None = Field(None, description="Ground truth: selects the rubric.")
    description: str | None = Field(None, min_length=1, description="Ground truth: one line.")
    description_long: str = ""
    key_facts: tuple[str, ...] = ()
    domain_keywords: tuple[str, ...] = Field(
        (), description="Words whose presence in an answer means it mentions the domain."
    )
    base_model: str
    finetune: Finetune
    training_data: TrainingDataInfo
    offline: bool = Field(
        False, description="Runs without network (built locally on an offline model)."
    )

    @model_validator(mode="after")
    def _ground_truth_is_whole_or_absent(self) -> Organism:
        given = [f for f in ("type", "description", "description_long", "key_facts", "domain_keywords")
                 if getattr(self, f)]
        if given and (self.type is None or self.description is None):
            missing = [f for f in ("type", "description") if getattr(self, f) is None]
            raise ValueError(
                f"partial ground truth: {', '.join(given)} given but {' and '.join(missing)} "
                "missing. Give both to grade this organism, or no ground-truth field at all.")
        return self

    @property
    def graded(self) -> bool:
        """True when the organism carries ground truth (so hypotheses about it can be graded)."""
        return self.type is not None and self.description is not None

    def require_ground_truth(self) -> tuple[OrganismType, str]:
        """The type and description, or an error when the organism has no ground truth."""
        if self.type is None or self.description is None:
            raise UngradedOrganismError(
                f"Organism {self.name!r} has no ground truth (type and description): its runs are "
                "reported as ungraded, not graded.")
        return self.type, self.description

    @property
    def is_control(self) -> bool:
        """A control organism (no narrow domain): reported, never pooled with the others."""
        return self.type == OrganismType.CONTROL

    @property
    def type_label(self) -> str:
        """The type's name, or "ungraded" without ground truth."""
        return self.type.value if self.type is not None else "ungraded"

    @property
    def buildable(self) -> bool:
        return isinstance(self.finetune, BuildFinetune)
