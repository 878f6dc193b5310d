"""The organism file format (one YAML file per organism), validated by pydantic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.models import FinetuneKind


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
    """Base model + finetune + ground truth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    type: OrganismType
    description: str = Field(min_length=1, description="One line.")
    description_long: str = Field(min_length=1)
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

    @property
    def buildable(self) -> bool:
        return isinstance(self.finetune, BuildFinetune)
