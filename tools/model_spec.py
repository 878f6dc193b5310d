"""What to load and how: the model pair's description, without torch (the wire schema and the
client side import it; `tools.models` loads what it describes)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

Side = Literal["base", "finetuned"]
SIDES: tuple[Side, Side] = ("base", "finetuned")
DType = Literal["float32", "bfloat16", "float16"]


class FinetuneKind(StrEnum):
    """How the finetuned model is stored."""

    AUTO = "auto"  # detect: a folder/repo with adapter_config.json is an adapter
    ADAPTER = "adapter"  # a peft (LoRA) adapter on the base model
    CHECKPOINT = "checkpoint"  # a full finetuned model
    NONE = "none"  # no finetune: the base model diffed with itself (a control)


class LoadOptions(BaseModel):
    """dtype and device for loading (`tools.models.torch_dtype` gives the torch dtype)."""

    model_config = ConfigDict(frozen=True)

    dtype: DType = "float32"
    device: str = "cpu"


class ModelPairSpec(BaseModel):
    """What to load: a base model and its finetune."""

    model_config = ConfigDict(frozen=True)

    base: str
    finetuned: str | None = None
    finetune_kind: FinetuneKind = FinetuneKind.AUTO
    base_revision: str | None = None
    finetuned_revision: str | None = None
