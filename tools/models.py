"""Loading a base/finetuned model pair from an offline short name, a local folder, a hub id,
a LoRA adapter or a full finetuned checkpoint, handed to a model backend (`tools.backend`),
which owns the weights from then on.

When the finetune is a LoRA adapter the pair holds *one* copy of the base weights: the backend
switches the adapter off to act as the base model and on to act as the finetuned one.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from tools.backend import BACKENDS, BackendName, LoadedModels, ModelPair
from tools.chat import has_chat_template
from tools.errors import BackendUnsupportedError, ModelLoadError, UnknownModelError
from tools.model_spec import FinetuneKind, LoadOptions, ModelPairSpec, Side, auto_dtype, device_type
from tools.offline_models import OFFLINE_MODELS, offline_model_dir
from tools.pair_checks import (
    HUB_NAME,
    check_pair,
    declared_base_note,
    hub_cache_dir,
    local_folder,
    recorded_base_name,
)

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
REMOTE_CODE_HINT = (
    "It needs its own code from its repository (transformers' trust_remote_code). Run that code "
    "only if you trust the repository: `--trust-remote-code`, or `load: {trust_remote_code: true}` "
    "in a worker or grid config.")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(options: LoadOptions) -> torch.dtype:
    """The torch dtype of `options.dtype` ("auto" is resolved when the options are made; options
    made without validation resolve it here the same way)."""
    dtype = auto_dtype(options.device) if options.dtype == "auto" else options.dtype
    return _DTYPES[dtype]


def check_device(options: LoadOptions) -> None:
    """Raise ModelLoadError when `options.device` is not available here (before any load)."""
    kind = device_type(options.device)
    if kind == "cuda":
        index = int(options.device.split(":")[1]) if ":" in options.device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ModelLoadError(
                f"Device {options.device!r} is not available: torch {torch.__version__} sees "
                f"{count} CUDA device(s) here. Use --device cpu, or another index.")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"Device 'mps' is not available with torch {torch.__version__} here.")


def known_model_names() -> list[str]:
    """Short names of the models available offline."""
    return sorted(OFFLINE_MODELS)


def _is_local_reference(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def resolve_model_location(name: str) -> str:
    """Turn a model name into something `from_pretrained` accepts.

    Offline short names are converted (once) into a cached folder; local folders are checked;
    anything shaped like `org/name` is passed on as a hub id (offline mode reads the hub cache).
    """
    if name in OFFLINE_MODELS:
        return str(offline_model_dir(name))
    if _is_local_reference(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"Model folder not found: {path}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model folder (no config.json in it).")
        return str(path)
    if HUB_NAME.match(name):
        return name
    raise UnknownModelError(
        f"Unknown model {name!r}. Known offline models: {', '.join(known_model_names())}; "
        "or give a local model folder or a hub id such as 'Qwen/Qwen3-1.7B'."
    )


def _detect_finetune_kind(location: str, revision: str | None) -> FinetuneKind:
    path = Path(location).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return FinetuneKind.ADAPTER
        if (path / "config.json").is_file():
            return FinetuneKind.CHECKPOINT
        raise ModelLoadError(
            f"{path} holds neither a peft adapter (adapter_config.json) nor a model (config.json)."
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename, kind in (("adapter_config.json", FinetuneKind.ADAPTER),
                           ("config.json", FinetuneKind.CHECKPOINT)):
        if isinstance(try_to_load_from_cache(location, filename, revision=revision), str):
            return kind
    try:
        hf_hub_download(location, "adapter_config.json", revision=revision)
        return FinetuneKind.ADAPTER
    except LocalEntryNotFoundError as exc:  # offline, or the hub unreachable, and not cached
        raise ModelLoadError(
            f"Finetuned model {location!r} was not found: not a local folder, not in the local hub "
            f"cache ({hub_cache_dir()}; set HF_HUB_CACHE or HF_HOME to use another), and the hub "
            f"could not be reached or HF_HUB_OFFLINE=1 forbids it ({exc.__class__.__name__})."
        ) from exc
    except EntryNotFoundError:
        return FinetuneKind.CHECKPOINT
    except Exception as exc:  # no such repo, gated repo, network errors, ...
        raise ModelLoadError(
            f"Finetuned model {location!r} was not found: not a local folder, and the hub "
            f"could not provide it ({type(exc).__name__}: {exc})."
        ) from exc


def recorded_base(finetune: str, revision: str | None = None) -> str:
    """The base model an adapter records (`base_model_name_or_path` in its adapter_config.json),
    for a caller that was given no base: a hub id, or a folder that exists here. A full
    checkpoint names no base reliably, and a folder of another machine is no base here: both
    are errors that ask for the base."""
    location = _resolve_finetune_location(finetune)
    if _detect_finetune_kind(location, revision) != FinetuneKind.ADAPTER:
        raise ModelLoadError(f"{finetune!r} is a full model, which does not record its base: give "
                             "the base model it was finetuned from (--base).")
    folder = Path(location).expanduser()
    if folder.is_dir():
        config_file = folder / "adapter_config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_file = Path(hf_hub_download(location, "adapter_config.json", revision=revision))
        except Exception as exc:  # offline and not cached, network errors, ...
            raise ModelLoadError(f"Could not read the adapter config of {finetune!r} "
                                 f"({type(exc).__name__}: {exc}); give the base (--base).") from exc
    recorded = recorded_base_name(config_file)
    if recorded is None:
        raise ModelLoadError(f"The adapter {finetune!r} does not record its base model "
                             "(base_model_name_or_path): give it (--base).")
    if not (HUB_NAME.match(recorded) or Path(recorded).expanduser().is_dir()):
        raise ModelLoadError(f"The adapter {finetune!r} records its base as {recorded!r}, which is "
                             "neither a hub id nor a folder here: give the base (--base).")
    return recorded


def _resolve_finetune_location(name: str) -> str:
    if _is_local_reference(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(f"Adapter or finetuned model path not found: {path}")
        return str(path)
    if HUB_NAME.match(name):
        return name
    raise ModelLoadError(
        f"Finetuned model {name!r} is neither an existing path nor a hub id (org/name)."
    )


def load_tokenizer(location: str, revision: str | None = None, *,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer, with a clear error when it cannot be found."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the tokenizer of {location!r}: "
                             f"{_remote_code_hint(exc, trust_remote_code)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _remote_code_hint(exc: Exception, trusted: bool) -> str:
    """The load error's text, or what to do when it asks for the repository's own code."""
    return REMOTE_CODE_HINT if "trust_remote_code" in str(exc) and not trusted else str(exc)


def _ships_tokenizer(location: str, revision: str | None) -> bool:
    """Whether a finetune ships a tokenizer (a checkpoint's, or one saved beside an adapter): by
    its files where they are here (a local folder; offline, its hub-cache snapshot), else by
    asking the hub. A hub that cannot answer is an error, not "no tokenizer": the answer decides
    the prompts' format and the cache keys."""
    folder = local_folder(location, revision, "finetuned model or adapter")
    if folder is not None:
        return any((folder / name).is_file() for name in TOKENIZER_FILES)
    from huggingface_hub import file_exists

    try:
        return any(file_exists(location, name, revision=revision) for name in TOKENIZER_FILES)
    except Exception as exc:  # the hub client raises HTTP, connection and validation errors
        raise ModelLoadError(f"Could not ask the hub whether {location!r} ships a tokenizer: "
                             f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class PairTokenizer:
    """The one tokenizer both models of a pair run with, the side it comes from, and what a
    researcher should know about that choice (None: nothing)."""

    tokenizer: PreTrainedTokenizerBase
    side: Side
    note: str | None = None


def load_pair_tokenizer(
    base_location: str, finetuned_location: str | None, *, base_revision: str | None = None,
    finetuned_revision: str | None = None, names: tuple[str, str] | None = None,
    trust_remote_code: bool = False,
) -> PairTokenizer:
    """The one tokenizer both models run with. As in the reference toolkit
    (`DiffingMethod.tokenizer`), the base's, unless the base has no chat template and the
    finetune ships a tokenizer with one (a chat finetune of a base model): then the finetune's,
    so that both models are asked in the format the finetune was trained on. The finetune's
    tokenizer must give the base's tokens their ids (the difference is taken token by token),
    and, to be the one used, add none (the base model has no embedding for them)."""
    names = names or (base_location, finetuned_location or base_location)
    base = load_tokenizer(base_location, base_revision, trust_remote_code=trust_remote_code)
    if finetuned_location is None or not _ships_tokenizer(finetuned_location, finetuned_revision):
        return PairTokenizer(base, "base")
    finetuned = load_tokenizer(finetuned_location, finetuned_revision,
                               trust_remote_code=trust_remote_code)
    base_vocab, finetuned_vocab = base.get_vocab(), finetuned.get_vocab()
    if any(finetuned_vocab.get(token) != index for token, index in base_vocab.items()):
        raise ModelLoadError(
            f"Cannot diff {names[1]!r} against {names[0]!r}: they use different tokenizers "
            "(the base's tokens have other ids). The finetune must keep its base model's tokenizer.")
    added = sorted(set(finetuned_vocab) - set(base_vocab))
    different_template = (has_chat_template(finetuned)
                          and finetuned.chat_template != base.chat_template)
    if different_template and not has_chat_template(base):
        if added:
            raise ModelLoadError(
                f"Cannot diff {names[1]!r} against {names[0]!r}: the base has no chat template, and "
                f"the finetune's, which would be used, comes with {len(added)} token(s) the base "
                f"model has no embedding for ({', '.join(map(repr, added[:5]))}).")
        return PairTokenizer(finetuned, "finetuned", (
            f"The base {names[0]!r} has no chat template and the finetune {names[1]!r} ships one: "
            "both models were asked with the finetune's tokenizer and template, as the reference "
            "toolkit does."))
    notes = []
    if different_template:
        notes.append(f"The finetune {names[1]!r} ships another chat template than its base; both "
                     "models were asked with the base's, as in the reference toolkit.")
    if added:
        notes.append(f"The finetune {names[1]!r} ships a tokenizer with {len(added)} token(s) its "
                     f"base lacks ({', '.join(map(repr, added[:5]))}); both models run with the "
                     "base's tokenizer.")
    return PairTokenizer(base, "base", " ".join(notes) or None)


def load_causal_lm(location: str, options: LoadOptions, revision: str | None = None) -> Any:
    """Load a causal LM in eval mode on the requested device and dtype; with a device_map,
    accelerate places its weights as the map says (the model is not moved afterwards)."""
    check_device(options)
    placement = {} if options.device_map is None else {"device_map": options.device_map}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype(options), revision=revision,
            trust_remote_code=options.trust_remote_code, **placement
        )
    except ImportError as exc:  # device_map needs accelerate; quantized weights their library
        placed = "" if options.device_map is None else f" with device_map={options.device_map!r}"
        raise ModelLoadError(f"Could not load model {location!r}{placed}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model {location!r}: "
                             f"{_remote_code_hint(exc, options.trust_remote_code)}") from exc
    if options.device_map is None:
        model = model.to(options.device)
    return model.eval()


def load_model_pair(
    spec: ModelPairSpec, options: LoadOptions | None = None, backend: BackendName = "bridge"
) -> ModelPair:
    """Load the pair described by `spec` (see `ModelPairSpec`) behind `backend` (see
    `tools.backend`). Where the bridge cannot run the pair faithfully, it is loaded again on
    the hf-hooks backend (a warning says why)."""
    return _with_backend_fallback(lambda name: _load_model_pair(spec, options, name), backend)


def _with_backend_fallback(make: Callable[[BackendName], ModelPair], backend: BackendName) -> ModelPair:
    """`make(backend)`; when the bridge refuses the pair (`BackendUnsupportedError`), the
    models it has touched are dropped and `make("hf-hooks")` is returned instead."""
    try:
        return make(backend)
    except BackendUnsupportedError as exc:
        if backend != "bridge":
            raise
        reason = str(exc)  # (the traceback, which holds the loaded models, is dropped here)
    log.warning("%s Loading the pair again on the hf-hooks backend.", reason)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        pair = make("hf-hooks")
    except BackendUnsupportedError as exc:
        raise BackendUnsupportedError(f"{reason} And on the hf-hooks backend: {exc}") from exc
    pair.notes.append(f"{reason} The pair ran on the hf-hooks backend.")
    return pair


def _load_model_pair(spec: ModelPairSpec, options: LoadOptions | None, backend: BackendName) -> ModelPair:
    options = options or LoadOptions()
    check_device(options)
    pair_class = BACKENDS[backend]
    base_location = resolve_model_location(spec.base)
    kind = spec.finetune_kind
    ft_location: str | None = None
    if spec.finetuned is None:
        if kind not in (FinetuneKind.AUTO, FinetuneKind.NONE):
            raise ModelLoadError(f"finetune_kind={kind.value} needs a finetuned model or adapter.")
        kind = FinetuneKind.NONE
    elif kind != FinetuneKind.NONE:
        if spec.finetuned in OFFLINE_MODELS:
            ft_location = resolve_model_location(spec.finetuned)
        else:
            ft_location = _resolve_finetune_location(spec.finetuned)
        if kind == FinetuneKind.AUTO:
            kind = _detect_finetune_kind(ft_location, spec.finetuned_revision)
    # Everything that can fail without loading weights fails here, before any model is loaded.
    names = (spec.base, spec.finetuned or spec.base)
    check_pair(base_location, ft_location, kind.value, base_revision=spec.base_revision,
               finetuned_revision=spec.finetuned_revision, names=names)
    chosen = load_pair_tokenizer(
        base_location, ft_location if kind != FinetuneKind.NONE else None,
        base_revision=spec.base_revision, finetuned_revision=spec.finetuned_revision,
        names=names, trust_remote_code=options.trust_remote_code)
    tokenizer, tokenizer_side = chosen.tokenizer, chosen.side
    notes: list[str] = []
    if chosen.note:
        log.warning("%s", chosen.note)
        notes.append(chosen.note)
    base_model = load_causal_lm(base_location, options, spec.base_revision)
    if kind == FinetuneKind.NONE or ft_location is None:
        return pair_class(LoadedModels(
            spec, tokenizer, {"base": base_model, "finetuned": base_model}, None,
            {"base": base_location, "finetuned": base_location}, options))

    if kind == FinetuneKind.ADAPTER:
        from peft import PeftModel

        try:
            peft_model = PeftModel.from_pretrained(
                base_model, ft_location, revision=spec.finetuned_revision
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load adapter {ft_location!r}: {exc}") from exc
        except RuntimeError as exc:  # shape mismatches, when the preflight could not read the files
            raise ModelLoadError(
                f"The adapter {spec.finetuned!r} does not fit {spec.base!r}; it was probably made for "
                f"another base model ({exc}).") from exc
        peft_model.eval()
        folder = local_folder(ft_location, spec.finetuned_revision, "adapter", downloaded=True)
        declared = declared_base_note(str(folder), spec.base, base_location, names) if folder else None
        if declared:
            log.warning("%s", declared)
            notes.append(declared)
        # peft injects the LoRA layers into `base_model` in place: calling it runs the finetune,
        # and `peft_model.disable_adapter()` turns it back into the base model.
        return pair_class(LoadedModels(
            spec, tokenizer, {"base": base_model, "finetuned": base_model}, peft_model,
            {"base": base_location, "finetuned": base_location}, options, tokenizer_side, notes))

    finetuned_model = load_causal_lm(ft_location, options, spec.finetuned_revision)
    if not (Path(base_location).is_dir() and Path(ft_location).is_dir()):
        # Hub files the preflight could not read before the load are in the cache now.
        check_pair(base_location, ft_location, kind.value, base_revision=spec.base_revision,
                   finetuned_revision=spec.finetuned_revision, names=names, downloaded=True)
    return pair_class(LoadedModels(
        spec, tokenizer, {"base": base_model, "finetuned": finetuned_model}, None,
        {"base": base_location, "finetuned": ft_location}, options, tokenizer_side, notes))


def pair_from_trained_adapter(
    spec: ModelPairSpec, tokenizer: PreTrainedTokenizerBase, peft_model: Any, location: str,
    options: LoadOptions, backend: BackendName = "bridge",
) -> ModelPair:
    """The pair of a LoRA adapter just trained in this process (`peft_model` wraps the base model
    loaded from `location`): the organism builder measures it without reloading it, unless the
    bridge cannot run it: then the adapter saved at `spec.finetuned` is loaded on hf-hooks."""
    peft_model.eval()
    base_model = peft_model.get_base_model()

    def make(name: BackendName) -> ModelPair:
        if name != backend:
            return _load_model_pair(spec, options, name)
        return BACKENDS[name](LoadedModels(
            spec, tokenizer, {"base": base_model, "finetuned": base_model}, peft_model,
            {"base": location, "finetuned": location}, options))

    return _with_backend_fallback(make, backend)
