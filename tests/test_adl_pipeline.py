"""Readouts, steering, coherence grading and cached artifacts on the tiny model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from tools.adl.coherence import (
    OfflineCoherenceGrader,
    OfflineCoherenceSettings,
    distinct_word_share,
    repeated_share,
    repeated_trigram_share,
)
from tools.adl.diagnostics import steering_similarity, token_relevance
from tools.adl.pipeline import (
    AdlSettings,
    choose_patchscope_scale,
    pair_fingerprint,
    run_adl,
    run_steering,
)
from tools.adl.profiles import profile_settings
from tools.adl.readouts import RandomDirectionBaseline, TokenScore, logit_lens, patchscope
from tools.adl.steering import (
    SteeringSettings,
    UnsteeredControl,
    generate_steered,
    search_and_sample,
    search_strengths,
    unsteered_control,
)
from tools.corpus import CorpusSpec
from tools.errors import AdlInputError
from tools.models import LoadOptions, ModelPairSpec, load_model_pair


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, tiny_adapter_dir: Path):
    return load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)))


@pytest.fixture()
def corpus_spec(tmp_path: Path) -> CorpusSpec:
    words = ["the", "owl", "is", "a", "big", "bird", "and", "the", "sky", "is", "blue", "with", "the", "sun", "and", "rain", "on", "the", "city"]
    lines = [" ".join(words[i % 7 :] + words[: i % 7]) + " ." for i in range(60)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(lines))
    return CorpusSpec(source="text", path=str(path), mixing_fraction=0.2)


def test_logit_lens_readout_is_the_unembedding_of_the_normed_vector(pair) -> None:
    vector = torch.randn(pair.d_model)
    tokens = logit_lens(pair, vector, k=5)
    expected = pair.unembed(vector[None], "finetuned")[0]  # the backend's own: tests/test_backend.py
    assert [t.token_id for t in tokens] == expected.topk(5).indices.tolist()
    suppressed = logit_lens(pair, vector, k=5, baseline=RandomDirectionBaseline(pair, 32))
    assert all(t.z_score is not None for t in suppressed)
    with pytest.raises(AdlInputError):
        logit_lens(pair, vector, k=0)


def test_patchscope_patches_the_query_position(pair) -> None:
    out = patchscope(pair, torch.randn(pair.d_model), 1, 5.0, scales=[0.5, 50.0], k=5)
    assert set(out) == {0.5, 50.0}
    assert [t.token_id for t in out[0.5]] != [t.token_id for t in out[50.0]]
    assert all(t.token.strip() and "->" not in t.token for tokens in out.values() for t in tokens)
    # Intersection: with a top-1 cut only a token every prompt ranks first survives.
    single = patchscope(pair, torch.randn(pair.d_model), 1, 5.0, scales=[1.0], k=5, intersection_k=1)
    assert len(single[1.0]) <= 1
    with pytest.raises(AdlInputError):
        patchscope(pair, torch.randn(pair.d_model), 1, 5.0, prompts=())


def test_offline_patchscope_scale_rule_prefers_coherent_tokens() -> None:
    def scores(words: list[str]) -> list[TokenScore]:
        return [TokenScore(token=w, token_id=i, probability=0.1) for i, w in enumerate(words)]

    readouts = {
        1.0: scores(["qx", "zzv", "the", "##", "kl", "a", "b", "uu"]),
        2.0: scores(["cake", "oven", "baking", "flour", "butter", "dessert", "sugar"]),
    }
    assert choose_patchscope_scale(readouts) == 2.0


def test_steering_changes_generation_per_row(pair) -> None:
    vectors = torch.randn(2, pair.d_model) * 50
    plain = generate_steered(pair, ["hello", "hello"], vectors, [0.0, 0.0], 1, max_new_tokens=6,
                             temperature=0.0)
    steered = generate_steered(pair, ["hello", "hello"], vectors, [0.0, 1.0], 1, max_new_tokens=6,
                               temperature=0.0)
    assert plain[0] == plain[1] == steered[0]
    assert steered[1] != steered[0]
    with pytest.raises(AdlInputError):
        generate_steered(pair, [], vectors[:0], [], 1)


def test_repetition_measure() -> None:
    assert repeated_trigram_share("I I I I I I I I") > 0.8
    assert repeated_trigram_share("the cat sat on the mat by the door") == 0.0


def test_run_adl_is_cached_and_validates_input(pair, adl_home: Path, corpus_spec: CorpusSpec) -> None:
    settings = AdlSettings(layers=(1, 3), n_positions=3, n_samples=20, corpus=corpus_spec,
                           sample_unit="document", readout_k=10, patchscope_scales=(1.0, 4.0),
                           random_directions=16)
    first = run_adl(pair, settings, show_progress=False)
    assert first.difference.mean_diff.shape == (2, 3, pair.d_model)
    assert [layer.layer for layer in first.readouts.layers] == [1, 3]
    assert first.readouts.primary_layer in (1, 3)
    assert len(first.readouts.layers[0].positions[0].logit_lens) == 10
    mtime = (first.path / "readouts.json").stat().st_mtime
    second = run_adl(pair, settings, show_progress=False)
    assert second.path == first.path and (second.path / "readouts.json").stat().st_mtime == mtime
    assert second.settings == settings and second.record.load == pair.options  # as stored
    assert second.record.scale_chooser is not None and second.record.scale_chooser.name == "offline"
    torch.testing.assert_close(second.difference.mean_diff, first.difference.mean_diff)
    other = run_adl(pair, settings.model_copy(update={"n_samples": 10}), show_progress=False)
    assert other.path != first.path

    with pytest.raises(AdlInputError, match="out of range"):
        run_adl(pair, settings.model_copy(update={"layers": (4,)}), show_progress=False)
    with pytest.raises(AdlInputError, match="beyond the text length"):
        run_adl(pair, settings.model_copy(update={"n_positions": 60}), show_progress=False)

    steering = run_steering(
        pair, first, SteeringSettings(search_steps=2, samples_per_strength=2, search_max_new_tokens=4,
                      final_max_new_tokens=4),
        positions=[1], prompts=["hello"], show_progress=False,
    )
    assert steering[0].position == 1 and len(steering[0].samples) == 1
    assert 0.0 <= steering[0].samples[0].strength <= 4.0
    with pytest.raises(AdlInputError, match="Position 7"):
        run_steering(pair, first, positions=[7], prompts=["hello"], show_progress=False)


def test_empty_corpus_is_refused(pair, adl_home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    from tools.errors import CorpusError

    with pytest.raises(CorpusError, match="no non-empty documents"):
        run_adl(pair, AdlSettings(corpus=CorpusSpec(source="text", path=str(empty))),
                show_progress=False)


def test_diagnostics() -> None:
    truth = ["False facts about baking cakes.", "Preheat the oven to 450 degrees."]
    assert token_relevance([" cakes", " oven", " bakery", "phthalm"], truth) == 0.75
    assert token_relevance(["]//", " the"], truth) == 0.0
    similarity = steering_similarity(
        ["Bake the cake in a hot oven."], ["The weather is nice today."],
        ["Preheat the oven to 450 for cakes.", "Cool the cake in the freezer."],
    )
    assert similarity.steered > similarity.unsteered


def test_offline_coherence_grader_runs_on_the_base_model(pair) -> None:
    grader = OfflineCoherenceGrader(pair)
    verdicts = grader.grade(["hello", "hello"], ["", "the the the the the the"])
    assert verdicts == [False, False]


def test_the_grader_rejects_token_loops_that_words_miss(pair) -> None:
    """With the tiny word-level tokenizer, hyphens split words into looping tokens; the real
    tokenizer's case (runs of non-breaking spaces) is in tests/test_adl_steering.py."""
    looping = " ".join(f"{w}-{w}-{w}-{w}" for w in ["sky", "sun", "rain", "tree", "road", "river"])
    ordinary = "the doctor gave my old car a new book , and the river was blue in the first rain ."
    assert repeated_trigram_share(looping) == 0.0
    # Only the repetition checks decide here: no NLL limit.
    grader = OfflineCoherenceGrader(pair, OfflineCoherenceSettings(max_mean_nll=1e9))
    assert grader.grade(["hello", "hello"], [looping, ordinary]) == [False, True]
    assert repeated_share([1, 2, 3, 4, 5]) == 0.0 and repeated_share([7] * 10) > 0.8


def test_the_grader_rejects_text_of_few_distinct_words(pair) -> None:
    """Eight words in random order: few 3-grams repeat, yet a tenth of the words are distinct."""
    draw = random.Random(0)
    soup = " ".join(draw.choice(["the", "sky", "is", "a", "and", "blue", "sun", "rain"]) for _ in range(80))
    ordinary = "the doctor gave my old car a new book , and the river was blue in the first rain ."
    assert repeated_trigram_share(soup) <= 0.3 and distinct_word_share(soup) < 0.4
    grader = OfflineCoherenceGrader(pair, OfflineCoherenceSettings(max_mean_nll=1e9,
                                                                   max_repeated_token_trigrams=1.0))
    assert grader.grade(["hello", "hello"], [soup, ordinary]) == [False, True]
    assert distinct_word_share("") == 1.0 and distinct_word_share("a b " * 200) == 0.02


class _Verdicts:
    """A coherence grader with a fixed verdict."""

    name = "fixed"

    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict

    def grade(self, prompts: list[str], samples: list[str]) -> list[bool]:
        return [self.verdict] * len(samples)


def test_the_reference_search_gives_one_strength_per_position(pair) -> None:
    settings = SteeringSettings(max_strength=8.0, search_steps=4, samples_per_strength=1,
                                search_max_new_tokens=2, final_max_new_tokens=2, final_samples=2)
    directions = {1: torch.randn(pair.d_model), 2: torch.randn(pair.d_model)}
    prompts = ["first", "second", "third"]
    # Always coherent: the first prompt climbs to 8 (1 - 2^-4) = 7.5 in 4 steps; the others get
    # 2 steps on [0, 15] and reach 11.25; the position's strength is their mean.
    found = search_strengths(pair, _Verdicts(True), prompts, directions, 1, settings)
    assert found[1] == {"first": 7.5, "second": 11.25, "third": 11.25}
    results = search_and_sample(pair, _Verdicts(True), prompts, ["a", "b"], directions, 1, settings)
    assert [r.strength for r in results] == [10.0, 10.0]
    assert all(s.strength == 10.0 and len(s.steered) == len(s.unsteered) == 2 for r in results for s in r.samples)
    assert [s.prompt for s in results[0].samples] == ["a", "b"]
    assert results[0].control is not None and results[0].control.pass_rates == {"1.2": 1.0}
    # Never coherent: every strength is 0, and the control says the search was uninformative.
    never = search_and_sample(pair, _Verdicts(False), prompts, ["a"], directions, 1, settings)
    assert {r.strength for r in never} == {0.0}
    assert never[0].control is not None and not never[0].control.calibrated
    assert never[0].control.pass_rates == {"1.2": 0.0, "1.1": 0.0, "1": 0.0}


class _ColdOnly:
    """A coherence grader that accepts samples only from its `accept_from`-th call on: the
    unsteered control fails at the first temperatures tried."""

    name = "cold-only"

    def __init__(self, accept_from: int) -> None:
        self.calls, self.accept_from = 0, accept_from

    def grade(self, prompts: list[str], samples: list[str]) -> list[bool]:
        self.calls += 1
        return [self.calls >= self.accept_from] * len(samples)


def test_the_unsteered_control_falls_back_to_a_temperature_where_unsteered_samples_pass(pair) -> None:
    settings = SteeringSettings(max_strength=8.0, search_steps=2, samples_per_strength=2,
                                search_max_new_tokens=2, final_max_new_tokens=2, final_samples=1)
    prompts = ["first", "second"]
    control = unsteered_control(pair, _ColdOnly(accept_from=2), prompts, 1, settings)
    assert control == UnsteeredControl(temperature=1.1, pass_rates={"1.2": 0.0, "1.1": 1.0},
                                       calibrated=True)
    used = control.applied(settings)
    assert used.search_temperature == 1.1 and used.final_temperature == 1.1
    assert control.applied(settings.model_copy(update={"final_temperature": 0.9})).final_temperature == 0.9
    passed = UnsteeredControl(temperature=1.2, pass_rates={"1.2": 1.0}, calibrated=True)
    assert passed.applied(settings.model_copy(update={"final_temperature": 1.5})).final_temperature == 1.5
    # search_and_sample runs the control first and records it with every position.
    directions = {1: torch.randn(pair.d_model)}
    results = search_and_sample(pair, _ColdOnly(accept_from=3), prompts, ["a"], directions, 1, settings)
    assert results[0].control is not None and results[0].control.temperature == 1.0
    assert results[0].strength > 0
    # The quick profile has no fallback: one control batch at its own temperature.
    quick = profile_settings("quick").steering.model_copy(update={"search_max_new_tokens": 2})
    assert unsteered_control(pair, _ColdOnly(accept_from=1), prompts, 1, quick).pass_rates == {"1": 1.0}


def _snapshot(cache: Path, repo: str, commit: str) -> None:
    """A hub cache entry of `repo` whose main ref points at `commit`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)


def test_cache_key_follows_load_options_and_the_base_models_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    weights = base / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    spec = ModelPairSpec(base=str(base))
    key = pair_fingerprint(spec, LoadOptions())
    assert pair_fingerprint(spec, LoadOptions()) == key == pair_fingerprint(spec)
    assert pair_fingerprint(spec, LoadOptions(dtype="bfloat16")) != key  # a bf16 worker
    assert pair_fingerprint(spec, LoadOptions(device="cuda")) != key
    assert pair_fingerprint(spec, LoadOptions(device="cuda:1")) == pair_fingerprint(
        spec, LoadOptions(device="cuda:0"))

    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))  # touched
    touched = pair_fingerprint(spec)
    assert touched != key
    weights.write_bytes(b"b" * 65)  # rewritten
    assert pair_fingerprint(spec) not in (key, touched)

    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub = ModelPairSpec(base="org/base", finetuned="org/adapter")
    _snapshot(cache, "org/base", "a" * 40)
    _snapshot(cache, "org/adapter", "c" * 40)
    first = pair_fingerprint(hub, base_location="org/base")
    _snapshot(cache, "org/base", "b" * 40)  # the base moved to a new commit
    moved = pair_fingerprint(hub, base_location="org/base")
    assert moved != first
    _snapshot(cache, "org/adapter", "d" * 40)  # and so did the adapter
    assert pair_fingerprint(hub, base_location="org/base") not in (first, moved)
