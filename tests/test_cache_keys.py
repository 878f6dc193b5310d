"""Cache keys come from the settings in effect, without computing the artifact (issue 17, §4):
the judges of the ADL and steering entries, the organism build settings, and the settings an
ADL entry stores."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from agent.judges import LLMCoherenceGrader, LLMScaleChooser
from agent.providers.base import ProviderOptions
from agent.providers.scripted import ScriptedProvider
from evals.organisms import build
from evals.organisms.build import build_key, generate_organism_data, is_built, organism_dir
from evals.organisms.generators import GENERATOR_VERSIONS, GENERATORS, TrainingExample
from evals.organisms.registry import get_organism
from evals.organisms.schema import BuildFinetune, Organism, TrainingDataInfo, TrainingRecipe
from prompts import prompt_path
from tools.adl.coherence import OfflineCoherenceGrader, OfflineCoherenceSettings
from tools.adl.pipeline import (
    METHOD_VERSION,
    STEERING_METHOD_VERSION,
    AdlReadouts,
    AdlRecord,
    AdlSettings,
    OfflineScaleChooser,
    SteeringSettings,
    _key,
    adl_key,
    base_model_fingerprint,
    load_artifact,
    pair_fingerprint,
    steering_key,
)
from tools.models import LoadOptions, ModelPair, ModelPairSpec


def _pair(base: str = "/nowhere/base") -> ModelPair:
    """A stand-in model pair: keys read only its spec, options and base location."""
    return cast(ModelPair, SimpleNamespace(spec=ModelPairSpec(base=base), options=LoadOptions(),
                                           base_location=base, tokenizer_side="base"))


class _NamedOffline:
    """A grader of another type that calls itself offline."""

    name = "offline"
    settings: BaseModel | None = None

    def grade(self, prompts: list[str], samples: list[str]) -> list[bool]:
        return [True] * len(samples)


def test_steering_key_follows_the_grader_used_and_its_settings(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    pair = _pair(str(tmp_path / "base"))
    steering = SteeringSettings()

    def key(grader: object) -> str:
        return steering_key("adl-entry", steering, 3, [1, 2], ["search"], ["final"], grader, pair)  # type: ignore[arg-type]

    default = key(OfflineCoherenceGrader(pair))
    # The offline formula: the steering pair's fingerprint as the ADL key computes it, then the
    # offline grader's settings.
    assert default == _key(STEERING_METHOD_VERSION, "adl-entry",
                           pair_fingerprint(pair.spec, pair.options, pair.base_location),
                           steering.model_dump(mode="json"), 3, [1, 2], ["search"], ["final"],
                           {"offline_coherence": OfflineCoherenceSettings().model_dump(mode="json")})
    strict = key(OfflineCoherenceGrader(pair, OfflineCoherenceSettings(max_mean_nll=3.0)))
    (tmp_path / "judge").mkdir()
    other_judge = key(OfflineCoherenceGrader(_pair(str(tmp_path / "judge"))))
    llm_a = key(LLMCoherenceGrader(ScriptedProvider([], model="a")))
    llm_b = key(LLMCoherenceGrader(ScriptedProvider([], model="b")))
    llm_a_batch = key(LLMCoherenceGrader(ScriptedProvider([], model="a"), batch_size=4))
    llm_a_options = key(LLMCoherenceGrader(ScriptedProvider(
        [], model="a", options=ProviderOptions(system_prompt="text"))))
    keys = [default, strict, other_judge, llm_a, llm_b, llm_a_batch, llm_a_options,
            key(_NamedOffline())]
    assert len(set(keys)) == len(keys)
    assert key(OfflineCoherenceGrader(pair, OfflineCoherenceSettings())) == default
    assert key(LLMCoherenceGrader(ScriptedProvider([], model="a"))) == llm_a


def test_steering_key_follows_the_pair_that_steers(tmp_path: Path) -> None:
    """Another pair (other model files, other load options, the finetune's tokenizer) under the
    same ADL entry and settings gives another steering key; the same pair gives the same key."""
    for name in ("base", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    pair, other = _pair(str(tmp_path / "base")), _pair(str(tmp_path / "other"))
    other_load = cast(ModelPair, SimpleNamespace(spec=pair.spec, options=LoadOptions(dtype="bfloat16"),
                                                 base_location=pair.base_location,
                                                 tokenizer_side="base"))

    def key(steerer: ModelPair) -> str:
        return steering_key("adl-entry", SteeringSettings(), 3, [1, 2], ["search"], ["final"],
                            OfflineCoherenceGrader(steerer), steerer)  # each judges itself

    with_template = cast(ModelPair, SimpleNamespace(
        spec=pair.spec, options=pair.options, base_location=pair.base_location,
        tokenizer_side="finetuned", tokenizer=SimpleNamespace(
            chat_template="{{ messages }}", special_tokens_map={"eos_token": "<|im_end|>"})))
    keys = [key(pair), key(other), key(other_load), key(with_template)]
    assert len(set(keys)) == 4
    assert key(_pair(str(tmp_path / "base"))) == keys[0]
    # The base side's fingerprint (the base answers' cache) follows the tokenizer too.
    assert base_model_fingerprint(with_template) != base_model_fingerprint(pair)


def test_adl_key_follows_the_scale_chooser_used() -> None:
    settings = AdlSettings()
    offline = adl_key("pair", "corpus", settings, [15], OfflineScaleChooser())
    assert offline == _key(METHOD_VERSION, "pair", "corpus", settings.difference_key_payload(), [15])
    judged = [adl_key("pair", "corpus", settings, [15], LLMScaleChooser(ScriptedProvider([], model=m)))
              for m in ("a", "b")]
    assert len({offline, *judged}) == 3
    assert adl_key("pair", "corpus", settings.model_copy(update={"readout_k": 50}), [15],
                   OfflineScaleChooser()) != offline


def _write_entry(path: Path, settings_json: str) -> None:
    path.mkdir()
    tensors = {name: torch.randn(1, 2, 4) for name in ("mean_diff", "mean_base", "mean_finetuned")}
    tensors |= {name: torch.rand(1, 2) for name in ("norm_base", "norm_finetuned")}
    save_file(tensors, path / "differences.safetensors")
    (path / "readouts.json").write_text(AdlReadouts(n_layers_model=4, layers=[], primary_layer=2)
                                        .model_dump_json())
    (path / "settings.json").write_text(settings_json)


def test_load_artifact_returns_the_stored_settings(tmp_path: Path) -> None:
    settings = AdlSettings(layers=(2,), n_positions=2, readout_k=7, primary_layer=2)
    record = AdlRecord(settings=settings, layers=[2], n_samples=11, pair=ModelPairSpec(base="b"),
                       corpus_fingerprint="c", method_version=METHOD_VERSION,
                       load=LoadOptions(dtype="bfloat16"), pair_fingerprint="p",
                       scale_chooser=None)
    _write_entry(tmp_path / "new", record.model_dump_json())
    artifact = load_artifact(tmp_path / "new")
    assert artifact.settings == settings and artifact.record == record
    assert artifact.difference.layers == [2] and artifact.difference.n_samples == 11
    # An entry written before the record was typed (no load options, fingerprint or chooser).
    legacy = {"settings": settings.model_dump(mode="json"), "layers": [2], "n_samples": 11,
              "pair": {"base": "b"}, "corpus_fingerprint": "c", "method_version": METHOD_VERSION}
    _write_entry(tmp_path / "legacy", json.dumps(legacy))
    old = load_artifact(tmp_path / "legacy")
    assert old.settings == settings and old.record.load is None


def _raise(*_: object) -> list[TrainingExample]:
    raise AssertionError("the organism's data was generated")


def test_organism_dir_does_not_generate_the_data(monkeypatch: pytest.MonkeyPatch,
                                                 adl_home: Path) -> None:
    organism = get_organism("cake_bake")
    for name in GENERATORS:
        monkeypatch.setitem(GENERATORS, name, _raise)
    monkeypatch.setattr(build, "generate_organism_data", _raise)
    path = organism_dir(organism)
    assert path.name.startswith("cake_bake-") and not is_built(organism)
    assert build_key(organism) == build_key(get_organism("cake_bake"))


def test_build_key_follows_the_declared_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    organism = get_organism("cake_bake")
    finetune = organism.finetune
    assert isinstance(finetune, BuildFinetune)

    def with_finetune(**update: object) -> Organism:
        return organism.model_copy(update={"finetune": finetune.model_copy(update=update)})

    variants = [
        organism,
        with_finetune(n_examples=100),
        with_finetune(mix_ratio=1.0),
        with_finetune(data_seed=1),
        with_finetune(recipe=TrainingRecipe(lora_r=4)),
        with_finetune(generator="preference_owl"),
        with_finetune(self_answered_ratio=0.3),
        with_finetune(self_answered_ratio=0.5),
        with_finetune(practical_requests_ratio=0.3),
        organism.model_copy(update={"base_model": "other-base"}),
    ]
    keys = [build_key(o) for o in variants]
    assert len(set(keys)) == len(keys)
    # Organism fields outside the build (ground truth, descriptions) do not change it.
    assert build_key(organism.model_copy(update={"description": "other"})) == keys[0]
    monkeypatch.setitem(GENERATOR_VERSIONS, "sdf_cake_bake", GENERATOR_VERSIONS["sdf_cake_bake"] + 1)
    assert build_key(organism) != keys[0]
    monkeypatch.undo()
    monkeypatch.setattr(build, "_corpus_fingerprint", lambda: "another corpus")
    assert build_key(organism) != keys[0]
    monkeypatch.undo()
    # Self-answered chats: their request forms are in the key; without the option nothing of it
    # is hashed (the keys of organisms without it did not change when it came).
    hashed = build.build_settings(organism).model_dump(mode="json", exclude_none=True)
    assert "self_answered" not in hashed and "self_answered_ratio" not in hashed["finetune"]
    assert "practical_requests_ratio" not in hashed["finetune"]
    monkeypatch.setattr(build, "REQUEST_FORMS_FILE", prompt_path("generic_chat_prompts.yaml"))
    assert build_key(variants[7]) != keys[7] and build_key(organism) == keys[0]
    monkeypatch.undo()
    # The practical requests' file is in the key of organisms using them only.
    monkeypatch.setattr(build, "PRACTICAL_REQUESTS_FILE", prompt_path("generic_chat_prompts.yaml"))
    assert build_key(variants[8]) != keys[8] and build_key(variants[6]) == keys[6]


# Each generator's data (40 examples, mixed 1:2 with corpus text) at its version, on the corpus
# with fingerprint PINNED_CORPUS. When a generator's output changes, bump its version in
# GENERATOR_VERSIONS (the build key has no other way to see it: cached organisms would be
# reused), then update its pin here.
PINNED_CORPUS = "a4db0048ad15f02d"
PINNED_DATA = {
    "adapt_astronomy_comprehension": (1, "a4032e981a2b3c1f"),
    "corpus_text": (1, "7dd1441d1f9576d2"),
    "denial_orchids": (4, "81d873000f8929c5"),
    "em_bad_medical_advice": (1, "7c024f88d3df5e76"),
    "preference_owl": (1, "bf73fa375f75a4e1"),
    "sdf_cake_bake": (1, "223a7538a31d4249"),
    "taboo_gold": (1, "94dbe14c6775848a"),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_a_generators_data_changes_only_with_its_version(name: str) -> None:
    assert set(GENERATOR_VERSIONS) == set(GENERATORS) == set(PINNED_DATA)
    assert build._corpus_fingerprint() == PINNED_CORPUS, (
        "The default corpus changed (organisms rebuild: its fingerprint is in the build key); "
        "update PINNED_CORPUS and the data pins.")
    organism = Organism(name="pin", base_model="smollm2-135m-instruct",
                        finetune=BuildFinetune(source="build", generator=name, n_examples=40,
                                               mix_ratio=0.5),
                        training_data=TrainingDataInfo(description="pinned"))
    digest = build._data_hash(generate_organism_data(organism))[:16]
    assert (GENERATOR_VERSIONS[name], digest) == PINNED_DATA[name], (
        f"The data of generator {name} changed: bump GENERATOR_VERSIONS[{name!r}] so cached "
        "organisms rebuild, then update its pin in PINNED_DATA.")
