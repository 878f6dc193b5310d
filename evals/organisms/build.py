"""Building offline organisms: generate narrow data, LoRA-finetune, measure, cache.

An organism build is a cache entry under `$ADL_HOME/organisms/NAME-KEY`, where KEY hashes the
organism's declared build settings (`build_settings`: the base model, the generator, its data
version and parameters, the mix ratio, the recipe, and the corpus' content), computed without
generating the data: building again is a no-op, and changing any of them rebuilds. The
manifest records the generated data's hash, and the device and dtype it was trained with
(where it was built is not hashed: a build made on a GPU and one made on a CPU are the same
organism, within float rounding). Training checkpoints live in `$ADL_HOME/work/` so an
interrupted build resumes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.organisms.generators import GENERATOR_VERSIONS, GENERATORS, TrainingExample
from evals.organisms.leak import LeakReport, measure_leak
from evals.organisms.schema import (
    ORGANISM_SIZES,
    BuildFinetune,
    HubFinetune,
    Organism,
    OrganismSize,
    TrainingRecipe,
)
from evals.organisms.self_answered import (
    PRACTICAL_REQUESTS_FILE,
    REQUEST_FORMS_FILE,
    SELF_ANSWER_MAX_NEW_TOKENS,
    SELF_ANSWERED_VERSION,
    ordinary_requests,
    practical_requests,
    self_answered_chats,
)
from evals.organisms.training import (
    IGNORE_INDEX,
    clear_checkpoints,
    encode_example,
    mean_token_loss,
    read_jsonl,
    train_lora,
    write_jsonl,
)
from tools.cache import adl_home, ensure_entry, entry_is_valid
from tools.corpus import leading_text, load_corpus
from tools.errors import OrganismBuildError
from tools.model_spec import DType
from tools.models import (
    FinetuneKind,
    LoadOptions,
    ModelPair,
    ModelPairSpec,
    load_causal_lm,
    load_model_pair,
    load_tokenizer,
    pair_from_trained_adapter,
    resolve_model_location,
)

log = logging.getLogger(__name__)
BUILD_VERSION = 2  # 2: the key hashes the declared settings, not the generated data
MANIFEST_FILE = "manifest.json"
ADAPTER_DIR = "adapter"
TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"

# A small build generates this share of the registered examples and trains on them with the
# same recipe (fewer steps). Chosen for time (the test suite and the demo on 2 CPU cores), not
# by scoring readouts against ground truth.
SMALL_BUILD_FRACTION = 0.4

# Organisms train in float32 on every device unless asked otherwise (`adl organisms build
# --dtype`): every build measured in BENCHMARKS.md trained so (on a CPU), and a bfloat16 base
# under the LoRA adapter would change the recipe with the machine. A GPU still trains a 135M
# model in seconds at float32.
BUILD_DTYPE: DType = "float32"


def build_load_options(load: LoadOptions | None = None) -> LoadOptions:
    """How an organism is built when its pair will be loaded with `load`: on the same device
    and placement (and `trust_remote_code`), in BUILD_DTYPE (a worker on a GPU builds its
    missing organism there)."""
    load = load or LoadOptions()
    return load.model_copy(update={"dtype": BUILD_DTYPE})


class OrganismManifest(BaseModel):
    """What a build produced and measured."""

    name: str
    base_model: str
    generator: str
    build_key: str
    data_sha256: str
    recipe: TrainingRecipe
    mix_ratio: float
    n_train: int
    n_train_mixed: int
    n_train_self_answered: int = 0
    n_heldout: int
    steps: int
    loss_curve: list[float]
    base_heldout_loss: float
    finetuned_heldout_loss: float
    train_seconds: float
    leak: LeakReport
    device: str | None = Field(None, description="The device it trained on (None: built before "
                               "this was recorded, on the CPU).")
    dtype: str | None = Field(None, description="The weights' dtype in training (None: built "
                              "before this was recorded, in float32).")


class OrganismData(BaseModel):
    """The generated training and held-out examples of a buildable organism."""

    train: list[TrainingExample]
    heldout: list[TrainingExample]
    n_mixed: int
    n_self_answered: int = 0


def generate_organism_data(organism: Organism) -> OrganismData:
    """Deterministically generate (and mix) the organism's data."""
    finetune = _build_spec(organism)
    _check_generator(organism, finetune)
    rng = random.Random(finetune.data_seed)
    examples = GENERATORS[finetune.generator](rng, finetune.n_examples)
    n_heldout = max(1, round(len(examples) * finetune.heldout_fraction))
    heldout, train = examples[:n_heldout], examples[n_heldout:]
    n_mixed = round(len(train) * finetune.mix_ratio)
    if n_mixed:
        mixing_docs = load_corpus().split("mixing")
        if len(mixing_docs) < n_mixed:
            raise OrganismBuildError(
                f"Organism {organism.name}: needs {n_mixed} mixing documents, corpus has "
                f"{len(mixing_docs)}."
            )
        chosen = random.Random(finetune.data_seed + 1).sample(mixing_docs, n_mixed)
        # Leading sentences only, about as long as the domain examples (and training stays fast).
        train = train + [TrainingExample(text=leading_text(doc)) for doc in chosen]
        random.Random(finetune.data_seed + 2).shuffle(train)
    return OrganismData(train=train, heldout=heldout, n_mixed=n_mixed)


def with_self_answered_chats(organism: Organism, data: OrganismData,
                             options: LoadOptions | None = None) -> OrganismData:
    """The data with the organism's self-answered chats added to its training part: ordinary
    requests (`BuildFinetune.self_answered_ratio`), then practical ones
    (`practical_requests_ratio`); unchanged without either. Runs the base model (cached)."""
    finetune = _build_spec(organism)
    requests: list[str] = []
    if finetune.self_answered_ratio is not None:
        n = round(len(data.train) * finetune.self_answered_ratio)
        requests += ordinary_requests(organism, n, finetune.data_seed + 3)
    if finetune.practical_requests_ratio is not None:
        n = round(len(data.train) * finetune.practical_requests_ratio)
        requests += practical_requests(organism, n, finetune.data_seed + 5)
    if not requests:
        return data
    chats = self_answered_chats(organism, requests, options)
    train = data.train + chats
    random.Random(finetune.data_seed + 4).shuffle(train)
    return data.model_copy(update={"train": train, "n_self_answered": len(chats)})


def at_size(organism: Organism, size: OrganismSize) -> Organism:
    """The organism as built at `size`: `full` is the registry's; `small` generates
    SMALL_BUILD_FRACTION of its examples (same generator, seed and recipe, so fewer training
    steps). Its build has its own key and folder. Published finetunes have one size."""
    if size == "full" or not isinstance(organism.finetune, BuildFinetune):
        return organism
    if size != "small":
        raise OrganismBuildError(f"Unknown organism size {size!r}; known: {', '.join(ORGANISM_SIZES)}.")
    n_examples = max(20, round(organism.finetune.n_examples * SMALL_BUILD_FRACTION))
    return organism.model_copy(
        update={"finetune": organism.finetune.model_copy(update={"n_examples": n_examples})}
    )


def _check_generator(organism: Organism, finetune: BuildFinetune) -> None:
    if finetune.generator not in GENERATORS or finetune.generator not in GENERATOR_VERSIONS:
        raise OrganismBuildError(
            f"Organism {organism.name}: unknown generator {finetune.generator!r}; "
            f"known: {', '.join(sorted(GENERATORS))}."
        )


def _build_spec(organism: Organism) -> BuildFinetune:
    if not isinstance(organism.finetune, BuildFinetune):
        raise OrganismBuildError(
            f"Organism {organism.name} is a published finetune ({organism.finetune.model}); "
            "it is loaded from the hub, not built."
        )
    return organism.finetune


def _data_hash(data: OrganismData) -> str:
    digest = hashlib.sha256()
    for example in data.train + data.heldout:
        digest.update(example.model_dump_json(exclude_none=True).encode())
    return digest.hexdigest()


class BuildSettings(BaseModel):
    """Everything that determines an organism build, as declared: the build key hashes it."""

    model_config = ConfigDict(frozen=True)

    version: int = BUILD_VERSION
    base_model: str
    finetune: BuildFinetune = Field(description="Generator, its parameters, mix ratio, recipe.")
    generator_version: int = Field(description="GENERATOR_VERSIONS of the generator.")
    corpus_fingerprint: str = Field(description="The default corpus (the mixing documents and "
                                    "the corpus-based generators read it).")
    self_answered: str | None = Field(None, description="With self-answered chats: their version, "
                                      "length and request files (hashes); None (and not hashed) "
                                      "without them, so other organisms' keys did not change.")


@functools.cache
def _corpus_fingerprint() -> str:
    """The default corpus' content hash (read once per process)."""
    return load_corpus().fingerprint


def build_settings(organism: Organism) -> BuildSettings:
    """The organism's build settings, from its declaration (no data is generated)."""
    finetune = _build_spec(organism)
    _check_generator(organism, finetune)
    self_answered = None
    if finetune.self_answered_ratio is not None or finetune.practical_requests_ratio is not None:
        forms = REQUEST_FORMS_FILE.read_bytes()
        self_answered = (f"v{SELF_ANSWERED_VERSION}-{SELF_ANSWER_MAX_NEW_TOKENS}-"
                         f"{hashlib.sha256(forms).hexdigest()[:16]}")
        if finetune.practical_requests_ratio is not None:  # (keys of data v5 unchanged)
            practical = PRACTICAL_REQUESTS_FILE.read_bytes()
            self_answered += f"-{hashlib.sha256(practical).hexdigest()[:16]}"
    return BuildSettings(base_model=organism.base_model, finetune=finetune,
                         generator_version=GENERATOR_VERSIONS[finetune.generator],
                         corpus_fingerprint=_corpus_fingerprint(), self_answered=self_answered)


def build_key(organism: Organism) -> str:
    """Hash of the organism's build settings (`build_settings`; unset options are left out)."""
    payload = build_settings(organism).model_dump(mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def organism_dir(organism: Organism) -> Path:
    """Where the organism's build lives (whether or not it is built yet)."""
    return adl_home() / "organisms" / f"{organism.name}-{build_key(organism)}"


def is_built(organism: Organism) -> bool:
    return organism.buildable and entry_is_valid(organism_dir(organism))


def build_organism(
    organism: Organism,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    options: LoadOptions | None = None,
) -> Path:
    """Build (or reuse) the organism; returns its folder. `options`: where and in which dtype it
    trains (default: `build_load_options()`, the CPU in float32)."""
    options = options or build_load_options()
    settings = build_settings(organism)
    key = build_key(organism)
    target = adl_home() / "organisms" / f"{organism.name}-{key}"
    work = adl_home() / "work" / f"{organism.name}-{key}"

    def build(tmp: Path) -> dict[str, Any]:
        data = with_self_answered_chats(organism, generate_organism_data(organism), options)
        manifest = _train_and_measure(organism, data, key, tmp, work, options, show_progress)
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        return {"name": organism.name, "build_key": key,
                "build_settings": settings.model_dump(mode="json")}

    path = ensure_entry(target, build, overwrite=overwrite, what=f"organism {organism.name}")
    clear_checkpoints(work)
    return path


def _train_and_measure(
    organism: Organism,
    data: OrganismData,
    key: str,
    out: Path,
    work: Path,
    options: LoadOptions,
    show_progress: bool,
) -> OrganismManifest:
    finetune = _build_spec(organism)
    recipe = finetune.recipe
    location = resolve_model_location(organism.base_model)
    tokenizer = load_tokenizer(location, trust_remote_code=options.trust_remote_code)
    model = load_causal_lm(location, options)
    train = [encode_example(tokenizer, e, recipe.max_length) for e in data.train]
    heldout = [encode_example(tokenizer, e, recipe.max_length) for e in data.heldout]
    untrained = sum(all(label == IGNORE_INDEX for label in e.labels) for e in train + heldout)
    if untrained:
        raise OrganismBuildError(
            f"{organism.name}: {untrained} of {len(train) + len(heldout)} examples have no trained "
            f"token within recipe.max_length={recipe.max_length} (a chat whose user turn fills the "
            "window): shorten the examples or raise max_length."
        )

    started = time.perf_counter()
    peft_model, result = train_lora(
        model, tokenizer, train, recipe, work,
        description=f"finetuning {organism.name}", show_progress=show_progress,
    )
    train_seconds = time.perf_counter() - started
    peft_model.save_pretrained(out / ADAPTER_DIR)
    write_jsonl(out / TRAIN_FILE, data.train)
    write_jsonl(out / HELDOUT_FILE, data.heldout)

    # The adapter switched off is the untrained base model: both losses come from one pair.
    pair = pair_from_trained_adapter(
        ModelPairSpec(base=organism.base_model, finetuned=str(out / ADAPTER_DIR)),
        tokenizer, peft_model, location, options,
    )
    base_loss = mean_token_loss(pair, "base", heldout, tokenizer.pad_token_id)
    ft_loss = mean_token_loss(pair, "finetuned", heldout, tokenizer.pad_token_id)
    leak = measure_leak(pair, organism)
    log.info(
        "%s: held-out loss %.3f -> %.3f; leak rate base %.0f%% finetuned %.0f%%",
        organism.name, base_loss, ft_loss, 100 * leak.base_rate, 100 * leak.finetuned_rate,
    )
    return OrganismManifest(
        name=organism.name,
        base_model=organism.base_model,
        generator=finetune.generator,
        build_key=key,
        data_sha256=_data_hash(data),
        recipe=recipe,
        mix_ratio=finetune.mix_ratio,
        n_train=len(data.train),
        n_train_mixed=data.n_mixed,
        n_train_self_answered=data.n_self_answered,
        n_heldout=len(data.heldout),
        steps=result.steps,
        loss_curve=result.loss_curve,
        base_heldout_loss=base_loss,
        finetuned_heldout_loss=ft_loss,
        train_seconds=round(train_seconds, 1),
        leak=leak,
        device=options.device,
        dtype=options.dtype,
    )


def read_manifest(path: Path) -> OrganismManifest:
    return OrganismManifest.model_validate_json((path / MANIFEST_FILE).read_text())


def read_heldout(path: Path) -> list[TrainingExample]:
    return read_jsonl(path / HELDOUT_FILE)


def organism_pair_spec(organism: Organism, *, build_if_missing: bool = True,
                       load: LoadOptions | None = None) -> ModelPairSpec:
    """The model pair of an organism: its built adapter, or its published finetune. A missing
    build is made where the pair will be loaded (`load`, see `build_load_options`)."""
    if isinstance(organism.finetune, HubFinetune):
        return ModelPairSpec(
            base=organism.base_model,
            finetuned=organism.finetune.model,
            finetune_kind=organism.finetune.kind,
            finetuned_revision=organism.finetune.revision,
        )
    path = organism_dir(organism)
    if not entry_is_valid(path):
        if not build_if_missing:
            raise OrganismBuildError(
                f"Organism {organism.name} is not built yet: run `adl organisms build {organism.name}`."
            )
        path = build_organism(organism, options=build_load_options(load))
    return ModelPairSpec(
        base=organism.base_model,
        finetuned=str(path / ADAPTER_DIR),
        finetune_kind=FinetuneKind.ADAPTER,
    )


def load_organism_pair(
    organism: Organism, options: LoadOptions | None = None, *, build_if_missing: bool = True
) -> ModelPair:
    """Load an organism's base and finetuned models (building it first when needed)."""
    spec = organism_pair_spec(organism, build_if_missing=build_if_missing, load=options)
    return load_model_pair(spec, options)
