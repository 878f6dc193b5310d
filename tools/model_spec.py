"""What to load and how: the model pair's description, without torch (the wire schema and the
client side import it; `tools.models` loads what it describes)."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tools.errors import AdlInputError

Side = Literal["base", "finetuned"]
SIDES: tuple[Side, Side] = ("base", "finetuned")

BackendName = Literal["bridge", "hf-hooks"]
"""How a model pair runs (tools/backend.py): `bridge`, transformer_lens's TransformerBridge (the
default), or `hf-hooks`, plain PyTorch forward hooks on the HF modules (no transformer_lens)."""
DType = Literal["auto", "float32", "bfloat16", "float16"]
DeviceMap = str | dict[str, str | int]
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
# accelerate's placement rules: they spread a model over the accelerators it finds.
PLACEMENT_RULES = ("auto", "balanced", "balanced_low_0", "sequential")
# What HF decoders call their list of transformer blocks, by architecture family (Llama and
# most: `layers`; GPT-2 and Falcon: `h`), and a module name's block index.
BLOCK_LIST_NAMES = ("layers", "h", "blocks")
BLOCK_INDEX = re.compile(rf"(?:^|\.)(?:{'|'.join(BLOCK_LIST_NAMES)})\.(\d+)\.")


class FinetuneKind(StrEnum):
    """How the finetuned model is stored."""

    AUTO = "auto"  # detect: a folder/repo with adapter_config.json is an adapter
    ADAPTER = "adapter"  # a peft (LoRA) adapter on the base model
    CHECKPOINT = "checkpoint"  # a full finetuned model
    NONE = "none"  # no finetune: the base model diffed with itself (a control)


def device_type(device: str | int) -> str:
    """`cpu`, `cuda`, `mps` or `disk` of a device string (an int is a CUDA index)."""
    return "cuda" if isinstance(device, int) else str(device).split(":")[0]


def auto_dtype(device: str) -> DType:
    """What `dtype="auto"` means on `device`: float32 on a CPU, bfloat16 on an accelerator."""
    return "float32" if device_type(device) == "cpu" else "bfloat16"


def _map_device_types(device_map: DeviceMap) -> set[str] | None:
    """The device types a device_map places weights on (None: a placement rule, which uses the
    accelerators it finds)."""
    if isinstance(device_map, str):
        return None if device_map in PLACEMENT_RULES else {device_type(device_map)}
    return {device_type(value) for value in device_map.values()}


class LoadOptions(BaseModel):
    """dtype, device and placement for loading (`tools.models.torch_dtype` gives the torch dtype).

    `dtype="auto"` (the default) is resolved when the options are made: float32 on a CPU,
    bfloat16 on an accelerator, so cache keys only ever see a concrete dtype (the CPU default's
    keys are those of explicit float32). `device_map` (None, an accelerate rule such as "auto",
    a device, or {module: device}) places a model larger than one GPU; `device` then names the
    accelerator type it uses (where the inputs go: the first weight's device).
    `trust_remote_code` lets a repository's own model and tokenizer code run."""

    model_config = ConfigDict(frozen=True)

    dtype: DType = "auto"
    device: str = "cpu"
    device_map: DeviceMap | None = None
    trust_remote_code: bool = Field(
        False, description="Run a model's own code from its repository (transformers' "
        "trust_remote_code), for architectures transformers does not ship. Off by default: "
        "that code runs with this process's rights; turn it on only for repositories you trust.")

    @model_serializer(mode="wrap")
    def _omit_default_trust(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Off (the default), it is left out: stored configs and records written before the field
        # existed compare equal to today's.
        data = handler(self)
        if not self.trust_remote_code:
            data.pop("trust_remote_code", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_dtype(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("dtype", "auto") == "auto":
            return {**data, "dtype": auto_dtype(str(data.get("device", "cpu")))}
        return data

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"device must be cpu, cuda, cuda:N or mps, not {device!r}")
        return device

    @field_validator("device_map")
    @classmethod
    def _check_device_map(cls, device_map: DeviceMap | None) -> DeviceMap | None:
        if isinstance(device_map, str) and not (device_map in PLACEMENT_RULES
                                                or _DEVICE.match(device_map)):
            raise ValueError(f"device_map must be one of {', '.join(PLACEMENT_RULES)}, a device, "
                             f"or {{module: device}}, not {device_map!r}")
        if isinstance(device_map, dict):
            for module, value in device_map.items():
                bad_index = isinstance(value, int) and value < 0
                if bad_index or (isinstance(value, str) and not (value == "disk"
                                                                 or _DEVICE.match(value))):
                    raise ValueError(f"device_map[{module!r}] must be a device (cpu, cuda:N, a "
                                     f"GPU index, mps or disk), not {value!r}")
        return device_map

    @model_validator(mode="after")
    def _check_placement(self) -> LoadOptions:
        if self.device_map is None:
            return self
        types = _map_device_types(self.device_map)
        accelerators = None if types is None else types - {"cpu", "disk"}
        kind = device_type(self.device)
        if accelerators is None and kind == "cpu":
            raise ValueError(f"device_map={self.device_map!r} spreads the model over the "
                             "accelerators: give device='cuda' (or mps) too, or device_map='cpu'")
        # A map on the CPU (and disk) only goes with device cpu; else with an accelerator it uses.
        if accelerators is not None and kind not in (accelerators or {"cpu"}):
            raise ValueError(f"device={self.device!r} does not match device_map (it places weights "
                             f"on {sorted(types or ())}): give the accelerator type it uses")
        return self


def parse_load_options(device: str = "cpu", dtype: str = "auto", device_map: str | None = None,
                       trust_remote_code: bool = False) -> LoadOptions:
    """LoadOptions from command-line text (`device_map`: a rule, a device or a JSON object),
    with a typed error naming what is wrong."""
    placement: Any = device_map
    if device_map is not None and device_map.lstrip().startswith("{"):
        try:
            placement = json.loads(device_map)
        except json.JSONDecodeError as exc:
            raise AdlInputError(f"--device-map is not valid JSON: {exc}") from exc
    try:
        return LoadOptions(device=device, dtype=dtype, device_map=placement,  # type: ignore[arg-type]
                           trust_remote_code=trust_remote_code)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                             for e in exc.errors())
        raise AdlInputError(f"Bad load options: {problems}") from exc


class ModelPairSpec(BaseModel):
    """What to load: a base model and its finetune."""

    model_config = ConfigDict(frozen=True)

    base: str
    finetuned: str | None = None
    finetune_kind: FinetuneKind = FinetuneKind.AUTO
    base_revision: str | None = None
    finetuned_revision: str | None = None
