"""Checks that a base model and a finetune can be diffed, before any weights are loaded.

Reads only configs, adapter configs and the headers of weight files (tensor names and shapes),
so that a pair that cannot be diffed fails in seconds with an error that names the problem and
what to do, and not after minutes of loading or in the middle of a run (the tokenizers are
compared in `tools.models.load_pair_tokenizer`, also before any weights load). Also the note on
an adapter that records another base (`declared_base_note`, after the load).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tools.errors import ModelLoadError
from tools.model_spec import BLOCK_INDEX

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.pt")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")  # org/name
# Pair-defining config fields: a finetune changes none of them.
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def hub_cache_dir() -> str:
    """The hub cache folder models are looked up in (HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def local_folder(location: str, revision: str | None, what: str, *, downloaded: bool = False) -> Path | None:
    """The folder holding `location`: itself when local, else its hub-cache snapshot when offline
    (the cache is all there is) or `downloaded` (after the load fetched it). None for a hub id
    while online before the load: a cached snapshot may be partial and the load completes it."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if not (_offline() or downloaded):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(location, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        if downloaded and not _offline():
            return None
        raise ModelLoadError(
            f"The {what} {location!r} is not in the local hub cache ({hub_cache_dir()}), or only "
            "partly, and HF_HUB_OFFLINE=1 forbids downloading it. Download it once with network "
            "(`huggingface-cli download ...`), point HF_HUB_CACHE or HF_HOME at a cache that "
            "holds it, or give a local folder."
        ) from exc


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"The {what} {path} cannot be read as JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"The {what} {path} is not a JSON object.")
    return data


def weight_shapes(folder: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a model folder's weights, from the file headers only. Missing
    shards, missing weights and unreadable (corrupt, truncated) files are errors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index, "weight index").get("weight_map", {}).values()))
        files = [folder / shard for shard in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(
                f"The {what} {folder} is missing weight shards named in its index: "
                f"{', '.join(missing)}. Download the model again.")
    else:
        files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if not files:
        raise ModelLoadError(
            f"The {what} {folder} has a config but no weight files (*.safetensors or "
            "pytorch_model*.bin). Download the model again or save it with save_pretrained.")
    return _shapes(files, what)


PACKED_DTYPES = ("U8", "I8", "U4", "I4")  # quantized bases store packed weights: no shape check


def _shapes(files: list[Path], what: str) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if file.suffix != ".safetensors":
            continue  # pickled weights have no header to read without loading them
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    tensor = handle.get_slice(name)
                    if tensor.get_dtype() not in PACKED_DTYPES:
                        shapes[name] = tuple(tensor.get_shape())
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ModelLoadError(
                f"The {what} weight file {file} is corrupt or truncated ({type(exc).__name__}: "
                f"{exc}). Download or save it again.") from exc
    return shapes


def _config(folder: Path, what: str) -> dict[str, Any]:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"The {what} {folder} is not a model folder (no config.json in it).")
    return _read_json(config, f"{what} config")


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs keep the language model's fields under `text_config`."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def check_configs(base: dict[str, Any], finetuned: dict[str, Any], names: tuple[str, str]) -> None:
    """A full finetune must keep the base's architecture and sizes."""
    a, b = _text_config(base), _text_config(finetuned)
    for field in SHAPE_FIELDS:
        if a.get(field) != b.get(field):
            raise ModelLoadError(
                f"Cannot diff {names[1]!r} against {names[0]!r}: different {field} "
                f"({b.get(field)!r} vs the base's {a.get(field)!r}). The finetune must be made from "
                "this base model; give the base it was trained from.")


TIED_OR_OPTIONAL = ("lm_head", "embed_tokens", "wte", "embed_out")
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<kind>[AB])(?:\.[^.]+)?\.weight$")


def check_adapter(adapter: Path, base_shapes: dict[str, tuple[int, ...]], names: tuple[str, str]) -> None:
    """The adapter's LoRA matrices must fit modules of the base with the same shapes."""
    config = _read_json(adapter / "adapter_config.json", "adapter config")
    # Adapters of parameters (peft's `target_parameters`, e.g. a mixture of experts' fused
    # expert weights) name modules as the model is in memory, which transformers may store
    # under other names on disk: those cannot be matched here, and the load checks them.
    parameter_targets = bool(config.get("target_parameters"))
    files = [adapter / f for f in ADAPTER_WEIGHTS if (adapter / f).is_file()]
    if not files:
        raise ModelLoadError(
            f"The adapter {adapter} has an adapter_config.json but no adapter_model.safetensors "
            "or adapter_model.bin. Save it again with save_pretrained.")
    shapes = _shapes(files, "adapter")
    if not base_shapes:
        return
    modules = {name.removesuffix(".weight"): shape for name, shape in base_shapes.items()
               if name.endswith(".weight")}
    by_block_path: dict[str, list[tuple[int, ...]]] = {}
    for module_name, module_shape in modules.items():
        path = _block_path(module_name)
        if path is not None:
            by_block_path.setdefault(path, []).append(module_shape)
    for name, shape in shapes.items():
        match = LORA_KEY.match(name)
        if match is None:
            continue
        module = match["module"]
        targets = _matching_shapes(module, modules, by_block_path)
        if not targets:
            if module.rsplit(".", 1)[-1] in TIED_OR_OPTIONAL or parameter_targets:
                continue  # a tied lm_head is not stored; packed weights were left out above
            raise ModelLoadError(
                f"The adapter {names[1]!r} was made for another base model: it adapts {module!r}, "
                f"which {names[0]!r} does not have. Give the base model it was trained on "
                "(adapter_config.json, base_model_name_or_path).")
        # lora_A: (r, in_features); lora_B: (out_features, r). The base weight is (out, in), or
        # (in, out) for GPT-2-style Conv1D layers: either orientation fits.
        size = shape[1] if match["kind"] == "A" else shape[0]
        if not any(len(target) != 2 or size in target for target in targets):
            raise ModelLoadError(
                f"The adapter {names[1]!r} was made for another base model: its {module} matrix "
                f"has shape {shape}, which does not fit the base's {targets[0]} in {names[0]!r}. "
                "Give the base model it was trained on (adapter_config.json, base_model_name_or_path).")


def declared_base_note(adapter_folder: str, base_name: str, base_location: str,
                       names: tuple[str, str]) -> str | None:
    """A note when an adapter (its folder, or its hub snapshot) records another base model
    (`base_model_name_or_path`) than the one it is diffed against; run after the load. Shapes
    cannot tell a base model from its instruct version: an adapter trained on one and diffed
    against the other mixes the other's own training into the difference. Names compare by
    their last part, case aside (a hub id's model name, a folder's name), with the given base's
    name, its folder or (an offline model) its hub name: a mirror under another organisation or
    a local copy in a folder of that name is the same model, as is the same folder. A recorded
    folder that does not exist here says nothing."""
    from tools.offline_models import OFFLINE_MODELS

    config_file = Path(adapter_folder).expanduser() / "adapter_config.json"
    declared = recorded_base_name(config_file) if config_file.is_file() else None
    if declared is None:
        return None
    given = {base_name, base_location}
    if base_name in OFFLINE_MODELS:
        given.add(OFFLINE_MODELS[base_name].hub_id)
    declared_folder = _existing_folder(declared)
    if declared_folder is None and not HUB_NAME.match(declared):
        return None  # a folder of another machine
    same_folder = declared_folder is not None and any(
        (folder := _existing_folder(g)) is not None and folder == declared_folder for g in given)
    if same_folder or any(_model_name(g) == _model_name(declared) for g in given):
        return None
    return (f"The adapter {names[1]!r} records its base model as {declared!r}, and it was diffed "
            f"against {names[0]!r}. If that is another model (a base model and its instruct "
            "version have the same shapes), the difference also holds what tells the two apart: "
            "give the base it was trained on.")


def recorded_base_name(adapter_config: Path) -> str | None:
    """The base an adapter config records (`base_model_name_or_path`), None when it records none."""
    recorded = _read_json(adapter_config, "adapter config").get("base_model_name_or_path")
    return recorded.strip() if isinstance(recorded, str) and recorded.strip() else None


def _existing_folder(name: str) -> Path | None:
    """`name` as a resolved folder when it is one here (a name too long for a path is not)."""
    try:
        path = Path(name).expanduser()
        return path.resolve() if path.is_dir() else None
    except (OSError, RuntimeError, ValueError):
        return None


def _model_name(name: str) -> str:
    """A hub id's model name, or a folder's name, in lower case."""
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _block_path(module: str) -> str | None:
    """A module's path from its block on ('layers.3.mlp.down_proj'), None outside the blocks."""
    match = BLOCK_INDEX.search(module)
    return module[match.start():].lstrip(".") if match else None


def _matching_shapes(module: str, modules: dict[str, tuple[int, ...]],
                     by_block_path: dict[str, list[tuple[int, ...]]]) -> list[tuple[int, ...]]:
    """The shapes of the base's weights an adapter's module name can refer to: the same name, one
    that ends the other, or else the same path from its block on (transformers stores some
    models under other prefixes on disk than in memory, such as a multimodal model's language
    model: `language_model.model.layers.N` on disk, `model.language_model.layers.N` in memory)."""
    if module in modules:
        return [modules[module]]
    found = [shape for name, shape in modules.items()
             if name.endswith("." + module) or module.endswith("." + name)]
    if found:
        return found
    path = _block_path(module)
    return by_block_path.get(path, []) if path is not None else []


def check_pair(
    base_location: str, finetuned_location: str | None, kind: str, *,
    base_revision: str | None = None, finetuned_revision: str | None = None,
    names: tuple[str, str] | None = None, downloaded: bool = False,
) -> None:
    """Every check that can be made without loading weights; `kind` is adapter or checkpoint.
    `downloaded`: run again after the load, when hub files skipped before are in the cache."""
    names = names or (base_location, finetuned_location or base_location)
    base = local_folder(base_location, base_revision, "base model", downloaded=downloaded)
    base_config = _config(base, "base model") if base else None
    base_shapes = weight_shapes(base, "base model") if base else {}
    if finetuned_location is None:
        return
    finetuned = local_folder(finetuned_location, finetuned_revision, "finetuned model or adapter",
                             downloaded=downloaded)
    if finetuned is None:
        return
    if kind == "adapter":
        check_adapter(finetuned, base_shapes, names)
        return
    finetuned_config = _config(finetuned, "finetuned model")
    weight_shapes(finetuned, "finetuned model")
    if base is not None and base_config is not None:
        check_configs(base_config, finetuned_config, names)

