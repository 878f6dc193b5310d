"""The ADL pipeline with cached artifacts: differences, readouts, steering.

Artifacts are cache entries keyed by content: the model pair (adapter or checkpoint files
hashed; the base model's file names, sizes and mtimes, or its hub commit; dtype and device
type), the corpus and its split, N, layers, positions and the method version, and the judge
used (the Patchscope scale chooser, the steering coherence grader: type, name and settings; see
`adl_key` and `steering_key`). Tensors are stored as safetensors, everything else as JSON; an
entry's settings.json records what it was computed with (`AdlRecord`, read back by
`load_artifact`). `overwrite=True` recomputes.

Two entries per pair and settings:
- `adl/<key>`: `differences.safetensors` (mean diff, both means, norms) and `readouts.json`;
- `adl-steering/<key>`: `steering.json` (strength search and samples), keyed on the first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file
from torch import Tensor

from prompts import load_prompt_set
from tools.adl.coherence import CoherenceGrader, OfflineCoherenceGrader
from tools.adl.differences import (
    ActivationDifference,
    compute_activation_difference,
    resolve_layers,
    select_sample_tokens,
)
from tools.adl.embeddings import mean_pairwise_similarity
from tools.adl.readouts import (
    PatchscopeRequest,
    RandomDirectionBaseline,
    logit_lens,
    patchscope_many,
)
from tools.adl.settings import REFERENCE_LAYER, AdlSettings, SteeringSettings, TokenScore
from tools.adl.steering import PositionSteering, search_and_sample
from tools.cache import adl_home, ensure_entry, sha256_file
from tools.corpus import load_corpus
from tools.errors import AdlInputError
from tools.models import LoadOptions, ModelPair, ModelPairSpec, resolve_model_location
from tools.offline_models import OFFLINE_MODELS

log = logging.getLogger(__name__)
METHOD_VERSION = 3
# 3: relative layers floor(r * (n_layers - 1)) as the reference; Patchscope on the reference's
# three identity prompts (top-k intersection) and 30 scales.
# 2: samples drawn with a working KV cache (transformers 5.24 with transformer_lens 4.3 drew
# gibberish after a bridge was booted); entries written before are recomputed. 3: the final
# steered and unsteered samples are drawn in one batch (unsteered rows at strength 0). 4: the
# reference's search (one strength per position, the mean over the search prompts) and separate
# search and final prompt sets. The key also holds the steering pair's fingerprint (entries
# written before it did are recomputed once).
STEERING_METHOD_VERSION = 4


class PositionReadout(BaseModel):
    position: int
    delta_norm: float
    logit_lens: list[TokenScore]
    logit_lens_suppressed: list[TokenScore]
    patchscope: dict[str, list[TokenScore]]
    patchscope_scale: float
    patchscope_scale_rule: str = "offline"


class LayerReadouts(BaseModel):
    layer: int
    reference_norm: float
    token_coherence: float = Field(
        description="Mean pairwise embedding similarity of the suppressed logit-lens top-20 "
        "tokens over positions 1.. (a ground-truth-free readability diagnostic)."
    )
    positions: list[PositionReadout]


class AdlReadouts(BaseModel):
    n_layers_model: int
    layers: list[LayerReadouts]
    primary_layer: int

    def layer(self, layer: int) -> LayerReadouts:
        for entry in self.layers:
            if entry.layer == layer:
                return entry
        raise AdlInputError(f"Layer {layer} has no readouts; available: {[l.layer for l in self.layers]}.")


class JudgeIdentity(BaseModel):
    """A judge (coherence grader or scale chooser) in cache keys and records: its type, name and
    settings (None: it has none)."""

    type: str
    name: str
    settings: dict[str, Any] | None = None


class AdlRecord(BaseModel):
    """What an ADL entry was computed with (its settings.json), as `load_artifact` reads it."""

    settings: AdlSettings
    layers: list[int] = Field(description="The computed blocks (`settings.layers` resolved).")
    n_samples: int
    pair: ModelPairSpec
    corpus_fingerprint: str
    method_version: int
    load: LoadOptions | None = Field(None, description="The load options (None: not recorded "
                                     "by the entries written before).")
    pair_fingerprint: str | None = Field(None, description="`loaded_pair_fingerprint` (`pair_fingerprint` "
                                        "in entries written before it; None: not recorded).")
    scale_chooser: JudgeIdentity | None = Field(None, description="The Patchscope scale chooser "
                                                "(None: not recorded).")


class AdlArtifact(BaseModel):
    """A computed (or cached) ADL result; `settings` and `record` are the ones it was computed
    with, as stored in the entry."""

    model_config = {"arbitrary_types_allowed": True}

    path: Path
    settings: AdlSettings
    record: AdlRecord
    readouts: AdlReadouts
    difference: Any  # ActivationDifference
    steering: list[PositionSteering] | None = None


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def model_fingerprint(location: str, revision: str | None = None) -> dict[str, Any]:
    """Cheap identity of a model's files, without reading the weights. A local folder: the
    relative path, size and mtime of every file (a rewritten or touched weight file changes
    it). A hub id: the commit of its snapshot in the local hub cache, else the id and revision."""
    folder = Path(location).expanduser()
    if folder.is_dir():
        files = []
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = file.stat()
            files.append([file.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns])
        return {"files": files}
    from huggingface_hub import try_to_load_from_cache

    commit = None
    for filename in ("config.json", "adapter_config.json"):
        cached = try_to_load_from_cache(location, filename, revision=revision)
        if isinstance(cached, str):  # .../snapshots/<commit>/<filename>
            commit = Path(cached).parent.name
            break
    return {"hub": location, "revision": revision, "commit": commit}


def pair_fingerprint(spec: ModelPairSpec, options: LoadOptions | None = None,
                     base_location: str | None = None) -> str:
    """Identity of a model pair as loaded: the spec, the load options (dtype, device type, and
    the device_map when one is given: options without one hash as before), the base model's
    files (`model_fingerprint` of `base_location`, by default where `spec.base` resolves to)
    and the content of a local finetune folder (hashed), or the hub commit of a hub finetune.
    An offline short name's content is fixed by its name."""
    options = options or LoadOptions()
    payload: dict[str, Any] = spec.model_dump(mode="json")
    payload["load"] = _load_payload(options)
    payload["base_files"] = model_fingerprint(base_location or resolve_model_location(spec.base),
                                              spec.base_revision)
    if spec.finetuned and Path(spec.finetuned).expanduser().is_dir():
        payload["finetuned_files"] = _folder_fingerprint(Path(spec.finetuned).expanduser())
    elif spec.finetuned and spec.finetuned not in OFFLINE_MODELS:
        payload["finetuned_files"] = model_fingerprint(spec.finetuned, spec.finetuned_revision)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def loaded_pair_fingerprint(pair: ModelPair) -> str:
    """`pair_fingerprint` of a loaded pair, plus its tokenizer when it is the finetune's
    (`tools.models.load_pair_tokenizer`: its chat template and special tokens then shape every
    prompt). A pair run with its base's tokenizer keeps the fingerprint it always had."""
    fingerprint = pair_fingerprint(pair.spec, pair.options, pair.base_location)
    tokenizer = _tokenizer_payload(pair)
    if not tokenizer:
        return fingerprint
    return hashlib.sha256(json.dumps([fingerprint, tokenizer], sort_keys=True).encode()).hexdigest()


def _tokenizer_payload(pair: ModelPair) -> dict[str, Any]:
    """Empty for the base's tokenizer; else what the finetune's changes: template and specials."""
    if pair.tokenizer_side == "base":
        return {}
    tokenizer = pair.tokenizer
    return {"tokenizer": pair.tokenizer_side, "chat_template": tokenizer.chat_template,
            "special_tokens": tokenizer.special_tokens_map}


def _load_payload(options: LoadOptions) -> dict[str, Any]:
    load: dict[str, Any] = {"dtype": options.dtype, "device": torch.device(options.device).type}
    if options.device_map is not None:
        load["device_map"] = options.device_map
    if options.trust_remote_code:  # the repository's code may replace transformers' own
        load["trust_remote_code"] = True
    return load


def base_model_fingerprint(pair: ModelPair) -> str:
    """Identity of a pair's base model as it runs: its name and revision, the load options and
    its files (as in `pair_fingerprint`), the backend class, and the finetune's tokenizer when the
    pair runs with it. Whatever the finetune, the base side of two pairs with one fingerprint
    computes the same thing."""
    payload = {
        "base": pair.spec.base, "base_revision": pair.spec.base_revision,
        "load": _load_payload(pair.options),
        "base_files": model_fingerprint(pair.base_location, pair.spec.base_revision),
        "backend": type(pair).__name__,
        **_tokenizer_payload(pair),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _token_strings(tokens: list[TokenScore], k: int = 20) -> list[str]:
    words = [t.token.strip() for t in tokens[:k]]
    return [w for w in words if any(c.isalpha() for c in w)]


def token_coherence(tokens: list[TokenScore], k: int = 20) -> float:
    """Mean pairwise embedding similarity of the alphabetic top-k tokens (0 if < 5 of them)."""
    words = _token_strings(tokens, k)
    return mean_pairwise_similarity(words) if len(words) >= 5 else 0.0


def choose_patchscope_scale(readouts: dict[float, list[TokenScore]]) -> float:
    """Offline rule: the scale whose top-20 tokens are most coherent (ties: smallest scale)."""
    scored = [(token_coherence(tokens), -scale, scale) for scale, tokens in readouts.items()]
    return max(scored)[2]


class ScaleChooser(Protocol):
    """Picks the Patchscope scale whose tokens read best (an LLM judge, or the offline rule).
    Its type, `name` and `settings` identify it in the ADL cache key (`adl_key`)."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> BaseModel | None:
        """Everything besides the type that decides its choice (None: nothing)."""
        ...

    def choose(self, readouts: dict[float, list[TokenScore]]) -> float: ...


class OfflineScaleChooser:
    """The documented offline rule (`choose_patchscope_scale`)."""

    name = "offline"
    settings = None

    def choose(self, readouts: dict[float, list[TokenScore]]) -> float:
        return choose_patchscope_scale(readouts)


def judge_identity(judge: CoherenceGrader | ScaleChooser) -> JudgeIdentity:
    """The judge's type (module and class), name and settings."""
    kind = type(judge)
    settings = judge.settings
    return JudgeIdentity(type=f"{kind.__module__}.{kind.__qualname__}", name=judge.name,
                         settings=None if settings is None else settings.model_dump(mode="json"))


def adl_key(pair_id: str, corpus_fingerprint: str, settings: AdlSettings, layers: list[int],
            scale_chooser: ScaleChooser) -> str:
    """The ADL entry's key, from what produces it: the pair as loaded (`loaded_pair_fingerprint`:
    spec, load options, model files, tokenizer), the corpus' content, the settings, the resolved
    layers and the scale chooser used. The offline rule adds nothing (the keys of entries
    written before are unchanged); any other chooser adds its identity, settings included."""
    parts: list[Any] = [METHOD_VERSION, pair_id, corpus_fingerprint, settings.difference_key_payload(),
                        layers]
    if type(scale_chooser) is not OfflineScaleChooser:
        parts.append({"scale_chooser": judge_identity(scale_chooser).model_dump(mode="json")})
    return _key(*parts)


def coherence_key_payload(grader: CoherenceGrader, pair: ModelPair) -> dict[str, Any]:
    """The coherence grader's part of the steering key: the offline grader's settings (and the
    pair whose base model judges, when it is not the steered pair), else the grader's identity."""
    if type(grader) is OfflineCoherenceGrader:
        payload: dict[str, Any] = {"offline_coherence": grader.settings.model_dump(mode="json")}
        if grader.pair is not pair:
            judge = grader.pair
            payload["judge_pair"] = loaded_pair_fingerprint(judge)
        return payload
    return {"coherence_grader": judge_identity(grader).model_dump(mode="json")}


def steering_key(adl_entry: str, settings: SteeringSettings, layer: int, positions: list[int],
                 search_prompts: list[str], prompts: list[str], grader: CoherenceGrader,
                 pair: ModelPair, null_positions: Sequence[int] = ()) -> str:
    """The steering entry's key: the ADL entry's key, the pair that steers as loaded
    (`loaded_pair_fingerprint`, as in `adl_key`), the steering
    settings, layer, positions, both prompt lists and the coherence grader used
    (`coherence_key_payload`); and the positions whose difference is zero, when there are any
    (they are not searched; entries written before that rule are recomputed)."""
    pair_id = loaded_pair_fingerprint(pair)
    parts: list[Any] = [STEERING_METHOD_VERSION, adl_entry, pair_id, settings.model_dump(mode="json"),
                        layer, positions, search_prompts, prompts, coherence_key_payload(grader, pair)]
    if null_positions:
        parts.append({"null_positions": list(null_positions)})
    return _key(*parts)


def compute_readouts(
    pair: ModelPair, difference: ActivationDifference, settings: AdlSettings, primary_layer: int,
    scale_chooser: ScaleChooser | None = None,
) -> AdlReadouts:
    """Logit lens (plain and hub-suppressed) and Patchscope for every layer and position."""
    chooser = scale_chooser or OfflineScaleChooser()
    baseline = RandomDirectionBaseline(pair, settings.random_directions, settings.seed)
    cells = [(layer, position) for layer in difference.layers for position in range(difference.n_positions)]
    scopes = dict(zip(cells, patchscope_many(
        pair,
        [PatchscopeRequest(difference.delta(layer, position), layer, difference.reference_norm(layer))
         for layer, position in cells],
        settings.patchscope_scales, settings.patchscope_k, prompts=settings.patchscope_prompts,
        intersection_k=settings.patchscope_intersection_k,
    ), strict=True))
    layers: list[LayerReadouts] = []
    for layer in difference.layers:
        reference = difference.reference_norm(layer)
        positions: list[PositionReadout] = []
        for position in range(difference.n_positions):
            delta = difference.delta(layer, position)
            scales = scopes[(layer, position)]
            positions.append(PositionReadout(
                position=position,
                delta_norm=float(delta.norm()),
                logit_lens=logit_lens(pair, delta, settings.readout_k),
                logit_lens_suppressed=logit_lens(pair, delta, settings.readout_k, baseline),
                patchscope={str(s): tokens for s, tokens in scales.items()},
                patchscope_scale=chooser.choose(scales),
                patchscope_scale_rule=chooser.name,
            ))
        informative = positions[1:] or positions
        coherence = sum(token_coherence(p.logit_lens_suppressed) for p in informative) / len(informative)
        layers.append(LayerReadouts(
            layer=layer, reference_norm=reference, token_coherence=coherence, positions=positions
        ))
    return AdlReadouts(n_layers_model=pair.n_layers, layers=layers, primary_layer=primary_layer)


class LayerChoice(BaseModel):
    """The primary layer picked by `choose_primary_layer`, with every layer's score."""

    layer: int
    rule: str
    scores: dict[int, float]


def choose_primary_layer(readouts: AdlReadouts, control: AdlReadouts, k: int = 20) -> LayerChoice:
    """The contrast rule: per layer that both pairs computed, the share of this pair's
    hub-suppressed logit-lens top-k tokens (positions 1.., per position) that the control pair's
    readout at the same layer (any of its positions 1..) lacks; the highest share wins, ties go to the layer
    nearest the reference's relative depth. A readout a generic finetune shares says nothing
    about this one. It sees tokens only: no organism, description or ground truth."""
    scores: dict[int, float] = {}
    control_layers = {entry.layer for entry in control.layers}
    for entry in readouts.layers:
        if entry.layer not in control_layers:
            continue
        other = control.layer(entry.layer)
        control_tokens = {t.token.strip().lower() for p in other.positions[1:] or other.positions
                          for t in p.logit_lens_suppressed[:k]}
        shares = []
        for position in entry.positions[1:] or entry.positions:
            own = {t.token.strip().lower() for t in position.logit_lens_suppressed[:k]}
            shares.append(len(own - control_tokens) / max(1, len(own)))
        scores[entry.layer] = round(sum(shares) / len(shares), 4)
    if not scores:
        raise AdlInputError("The control pair has readouts at none of this pair's layers.")
    target = REFERENCE_LAYER * (readouts.n_layers_model - 1)
    layer = max(scores, key=lambda layer: (scores[layer], -abs(layer - target)))
    return LayerChoice(layer=layer, rule="control_contrast", scores=scores)


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), disable=not show,
    )


def run_adl(
    pair: ModelPair,
    settings: AdlSettings | None = None,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    scale_chooser: ScaleChooser | None = None,
) -> AdlArtifact:
    """Compute (or load from cache) activation differences and readouts. The Patchscope scale
    is chosen by `scale_chooser` (an LLM judge) when given, else by the offline rule."""
    settings = settings or AdlSettings()
    layers = resolve_layers(settings.layers, pair.n_layers)
    primary_layer = resolve_layers([settings.primary_layer], pair.n_layers)[0]
    if primary_layer not in layers:
        raise AdlInputError(
            f"The primary layer {settings.primary_layer} (block {primary_layer}) is not among the "
            f"computed layers {layers}."
        )
    corpus = load_corpus(settings.corpus)
    chooser = scale_chooser or OfflineScaleChooser()
    pair_id = loaded_pair_fingerprint(pair)
    key = adl_key(pair_id, corpus.fingerprint, settings, layers, chooser)
    target = adl_home() / "adl" / key

    def build(tmp: Path) -> dict[str, Any]:
        samples = corpus.samples("diff", unit=settings.sample_unit)
        tokens = select_sample_tokens(
            pair.tokenizer, samples, settings.n_positions, settings.n_samples, settings.seed
        )
        log.info("ADL: differences of %d samples x %d positions at blocks %s (cache %s)",
                 len(tokens), settings.n_positions, layers, key)
        started = time.perf_counter()
        difference = compute_activation_difference(
            pair, tokens, layers, batch_size=settings.batch_size, show_progress=show_progress
        )
        log.info("ADL: differences done in %.0f s; readouts (logit lens, Patchscope at %d scales)",
                 time.perf_counter() - started, len(settings.patchscope_scales))
        save_file({k: v.contiguous() for k, v in difference.tensors().items()},
                  tmp / "differences.safetensors")
        readouts = compute_readouts(pair, difference, settings, primary_layer, chooser)
        (tmp / "readouts.json").write_text(readouts.model_dump_json())
        record = AdlRecord(
            settings=settings, layers=layers, n_samples=difference.n_samples, pair=pair.spec,
            corpus_fingerprint=corpus.fingerprint, method_version=METHOD_VERSION, load=pair.options,
            pair_fingerprint=pair_id, scale_chooser=judge_identity(chooser),
        )
        (tmp / "settings.json").write_text(record.model_dump_json(indent=2))
        return {"key": key}

    path = ensure_entry(target, build, overwrite=overwrite, what="ADL differences")
    return load_artifact(path)


def load_artifact(path: Path) -> AdlArtifact:
    """An ADL entry with the settings it was computed with (its settings.json)."""
    record = AdlRecord.model_validate_json((path / "settings.json").read_text())
    tensors = load_file(path / "differences.safetensors")
    difference = ActivationDifference(
        layers=record.layers, n_positions=tensors["mean_diff"].shape[1],
        n_samples=record.n_samples, **tensors,
    )
    readouts = AdlReadouts.model_validate_json((path / "readouts.json").read_text())
    return AdlArtifact(path=path, settings=record.settings, record=record, readouts=readouts,
                       difference=difference)


def steering_direction(difference: ActivationDifference, layer: int, position: int) -> Tensor:
    """unit(delta[layer, position]) times the finetuned model's mean residual norm there:
    steering strength 1.0 adds one typical residual norm."""
    delta = difference.delta(layer, position)
    reference = difference.reference_norm(layer, side="finetuned")
    return delta / delta.norm().clamp_min(1e-12) * reference


def run_steering(
    pair: ModelPair,
    artifact: AdlArtifact,
    settings: SteeringSettings | None = None,
    *,
    layer: int | None = None,
    positions: list[int] | None = None,
    prompts: list[str] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    coherence_grader: CoherenceGrader | None = None,
) -> list[PositionSteering]:
    """Coherence-searched steering at `layer` (default: the primary layer), cached. `prompts`:
    the final samples' prompts (default: the settings' final prompt set); the search uses the
    settings' search prompt set. Coherence is judged by `coherence_grader` (an LLM judge) when
    given, else offline by the base model."""
    settings = settings or SteeringSettings()
    difference: ActivationDifference = artifact.difference
    layer = artifact.readouts.primary_layer if layer is None else layer
    difference.layer_index(layer)
    positions = list(range(difference.n_positions)) if positions is None else positions
    for position in positions:
        difference.check_position(position)
    search_prompts = load_prompt_set(settings.search_prompt_set)
    prompts = prompts or load_prompt_set(settings.final_prompt_set)
    grader = coherence_grader or OfflineCoherenceGrader(pair)
    null_here = difference.null_positions(layer)
    null = [p for p in positions if p in null_here]
    key = steering_key(artifact.path.name, settings, layer, positions, search_prompts, prompts, grader,
                       pair, null)
    target = adl_home() / "adl-steering" / key

    def build(tmp: Path) -> dict[str, Any]:
        directions = {p: steering_direction(difference, layer, p) for p in positions}
        log.info("ADL steering at block %d, positions %s (cache %s)", layer, positions, key)
        if null:
            log.warning("ADL steering: the difference at block %d is zero at positions %s: no "
                        "search there (strength 0, unsteered samples).", layer, null)
        with _progress(show_progress) as progress:
            results = search_and_sample(pair, grader, search_prompts, prompts, directions, layer,
                                        settings, progress, null_positions=null)
        (tmp / "steering.json").write_text(json.dumps([r.model_dump() for r in results], indent=2))
        return {"key": key}

    path = ensure_entry(target, build, overwrite=overwrite, what="ADL steering")
    data = json.loads((path / "steering.json").read_text())
    return [PositionSteering.model_validate({**item, "cache_key": path.name}) for item in data]
