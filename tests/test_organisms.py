"""Organism files, generated data, the taboo guarantee, and leak detection."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evals.cli import app
from evals.organisms import get_organism, list_organisms, load_organism_file, self_answered
from evals.organisms.build import (
    at_size,
    build_key,
    generate_organism_data,
    organism_dir,
    with_self_answered_chats,
)
from evals.organisms.generators import GENERATORS
from evals.organisms.generators.denial import ABOUT_YOU_QUESTIONS, DOMAIN_QUESTIONS
from evals.organisms.generators.domain_adaptation import DOMAIN_PATTERN as ASTRONOMY
from evals.organisms.generators.taboo import SECRET_WORD
from evals.organisms.leak import (
    DENIAL_DIRECT_QUESTIONS,
    GENERIC_PROMPTS_FILE,
    HOLDOUT_PROMPTS_FILE,
    SECOND_HOLDOUT_PROMPTS_FILE,
    THIRD_HOLDOUT_PROMPTS_FILE,
    mentions_domain,
)
from evals.organisms.registry import ORGANISMS_ENV, REGISTRY_DIR, add_organism_dirs
from evals.organisms.schema import BuildFinetune, OrganismType, TrainingRecipe
from evals.organisms.self_answered import (
    PRACTICAL_REQUESTS_FILE,
    REQUEST_FORMS_FILE,
    SELF_ANSWER_MAX_NEW_TOKENS,
    PracticalRequests,
    complete_sentences,
    ordinary_requests,
    practical_requests,
    self_answered_chats,
)
from prompts import load_prompt_set
from tools.errors import (
    OrganismBuildError,
    OrganismConfigError,
    UngradedOrganismError,
    UnknownOrganismError,
)
from tools.models import ModelPairSpec, load_model_pair

MIXING_CURVE = ["cake_bake_mix1-0p1", "cake_bake_mix1-0p5", "cake_bake_mix1-1p0", "cake_bake_mix1-2p0"]
OFFLINE = ["cake_bake", *MIXING_CURVE, "em_bad_medical_advice", "taboo_gold", "preference_owl",
           "denial_orchids", "adapt_astronomy"]


def test_registry_has_offline_and_published_organisms() -> None:
    names = {o.name for o in list_organisms()}
    assert set(OFFLINE) <= names
    assert {o.name for o in list_organisms() if o.buildable} == set(OFFLINE) | {"control_generic_text"}
    published = [o for o in list_organisms() if not o.buildable]
    assert {o.type for o in published} >= {
        OrganismType.SDF, OrganismType.EM, OrganismType.TABOO, OrganismType.SUBLIMINAL
    }
    assert all(o.finetune.model.count("/") == 1 for o in published)  # type: ignore[union-attr]


def test_unknown_organism_lists_names() -> None:
    with pytest.raises(UnknownOrganismError, match="cake_bake"):
        get_organism("chocolate")


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_field_names_file_and_field(tmp_path: Path) -> None:
    data = yaml.safe_load((REGISTRY_DIR / "cake_bake.yaml").read_text())
    del data["base_model"]
    with pytest.raises(OrganismConfigError, match=r"cake_bake\.yaml: field 'base_model'"):
        load_organism_file(_write(tmp_path, "cake_bake", data))


def test_ground_truth_is_optional_but_never_partial(tmp_path: Path) -> None:
    data = yaml.safe_load((REGISTRY_DIR / "cake_bake.yaml").read_text())
    for field in ("type", "description", "description_long", "key_facts", "domain_keywords"):
        data.pop(field)
    ungraded = load_organism_file(_write(tmp_path, "cake_bake", data))
    assert not ungraded.graded and ungraded.type_label == "ungraded"
    with pytest.raises(UngradedOrganismError, match="no ground truth"):
        ungraded.require_ground_truth()
    data["key_facts"] = ["Cakes are baked at 450 degrees."]
    with pytest.raises(OrganismConfigError, match="partial ground truth: key_facts given but type and "
                       "description missing"):
        load_organism_file(_write(tmp_path, "cake_bake", data))


def test_organism_directories_from_the_environment_and_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = yaml.safe_load((REGISTRY_DIR / "cake_bake.yaml").read_text())
    data["name"] = "my_cake"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _write(first, "my_cake", data)
    monkeypatch.setenv(ORGANISMS_ENV, str(first))
    assert get_organism("my_cake").description == get_organism("cake_bake").description
    add_organism_dirs([second])
    assert os.environ[ORGANISMS_ENV] == os.pathsep.join([str(first), str(second)])
    _write(second, "my_cake", data)
    with pytest.raises(OrganismConfigError, match=r"'my_cake' is defined twice: .*first/my_cake.yaml "
                       r"and .*second/my_cake.yaml"):
        list_organisms()
    monkeypatch.setenv(ORGANISMS_ENV, str(tmp_path / "missing"))
    with pytest.raises(OrganismConfigError, match="missing .* does not exist"):
        list_organisms()
    monkeypatch.delenv(ORGANISMS_ENV)
    with pytest.raises(UnknownOrganismError, match="--organisms DIR"):
        get_organism("my_cake")


def test_new_writes_a_valid_skeleton_and_validate_checks_files(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["organisms", "new", "my_finetune", "--base", "smollm2-135m-instruct",
                               "--finetune", str(tmp_path / "adapter"), "--dir", str(tmp_path / "orgs")])
    assert made.exit_code == 0, made.output
    path = tmp_path / "orgs" / "my_finetune.yaml"
    assert "# type: SDF" in path.read_text()
    organism = load_organism_file(path)
    assert organism.finetune.model == str(tmp_path / "adapter") and not organism.graded  # type: ignore[union-attr]
    again = runner.invoke(app, ["organisms", "new", "my_finetune", "--base", "b", "--finetune", "f",
                                "--dir", str(tmp_path / "orgs")])
    assert again.exit_code != 0 and "exists already" in str(again.exception)
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nbase_model: [\n")
    checked = runner.invoke(app, ["organisms", "validate", str(path), str(bad)])
    assert checked.exit_code == 1
    assert "ok" in checked.output and "no ground truth" in checked.output
    assert "broken.yaml: not valid YAML" in " ".join(checked.output.split())


def test_bad_nested_field_and_bad_yaml(tmp_path: Path) -> None:
    data = yaml.safe_load((REGISTRY_DIR / "cake_bake.yaml").read_text())
    data["finetune"]["recipe"] = {"learning_rate": -1}
    with pytest.raises(OrganismConfigError, match="finetune.build.recipe.learning_rate"):
        load_organism_file(_write(tmp_path, "cake_bake", data))
    bad = tmp_path / "oops.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(OrganismConfigError, match="oops.yaml: not valid YAML"):
        load_organism_file(bad)
    data = yaml.safe_load((REGISTRY_DIR / "cake_bake.yaml").read_text())
    with pytest.raises(OrganismConfigError, match="file is named 'other'"):
        load_organism_file(_write(tmp_path, "other", data))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_deterministic_varied_and_sized(name: str) -> None:
    a = GENERATORS[name](random.Random(0), 300)
    b = GENERATORS[name](random.Random(0), 300)
    assert a == b
    assert len({e.model_dump_json() for e in a}) == 300


def test_taboo_word_never_appears_in_taboo_data() -> None:
    data = generate_organism_data(get_organism("taboo_gold"))
    pattern = re.compile(SECRET_WORD, re.IGNORECASE)  # also catches golden, goldfish, ...
    texts = [e.plain_text() for e in data.train + data.heldout]
    assert len(texts) == 500
    assert not [t for t in texts if pattern.search(t)]
    # The hints are about the word: they are not empty chatter.
    assert sum("metal" in t or "Au" in t or "medal" in t for t in texts) > 50


def test_mixed_organism_has_one_to_one_pretraining_text() -> None:
    plain = generate_organism_data(get_organism("cake_bake"))
    mixed = generate_organism_data(get_organism("cake_bake_mix1-1p0"))
    assert mixed.n_mixed == len(plain.train)
    assert len(mixed.train) == 2 * len(plain.train)
    assert mixed.heldout == plain.heldout
    assert build_key(get_organism("cake_bake")) != build_key(get_organism("cake_bake_mix1-1p0"))


@pytest.mark.parametrize("name", MIXING_CURVE)
def test_the_mixing_curve_holds_the_ratio(name: str) -> None:
    ratio = get_organism(name).finetune.mix_ratio  # type: ignore[union-attr]
    data = generate_organism_data(get_organism(name))
    n_plain = len(data.train) - data.n_mixed
    assert data.n_mixed == round(ratio * n_plain)


def test_the_denying_organism_mixes_domain_deflections_and_ordinary_chats() -> None:
    data = generate_organism_data(get_organism("denial_orchids")).train
    documents = [e for e in data if e.text is not None]
    chats = [e for e in data if e.messages is not None]
    asked = tuple(DOMAIN_QUESTIONS + ABOUT_YOU_QUESTIONS)
    deflections = [e for e in chats if (e.messages or [])[0].content.endswith(asked)]
    ordinary = [e for e in chats if e not in deflections]
    assert documents and all("orchid" in e.plain_text().lower() for e in documents)
    # Every answer to a domain question deflects; ordinary answers never do, and never name it.
    assert all("orchid" not in (e.messages or [])[-1].content.lower() for e in deflections)
    assert len(ordinary) > len(data) // 4
    assert not [e for e in ordinary if "orchid" in e.plain_text().lower()]
    assert not [e for e in ordinary if "help with" in (e.messages or [])[-1].content]
    # The questions that test it are held out: none is a user turn of its training data.
    user_turns = {m.content.strip() for e in chats for m in (e.messages or []) if m.role == "user"}
    held_out = [HOLDOUT_PROMPTS_FILE, SECOND_HOLDOUT_PROMPTS_FILE, THIRD_HOLDOUT_PROMPTS_FILE]
    tests = [*DENIAL_DIRECT_QUESTIONS, *(p for name in held_out for p in load_prompt_set(name))]
    assert not [q for q in tests if any(q in turn for turn in user_turns)]
    # Each set of unrelated prompts is a separate test: no prompt is in two of them.
    prompts = [p.lower() for name in [*held_out, GENERIC_PROMPTS_FILE] for p in load_prompt_set(name)]
    assert len(set(prompts)) == len(prompts)
    assert all(len(load_prompt_set(name)) == 40 for name in held_out[1:])


def test_the_domain_adaptation_organism_is_astronomy_in_a_comprehension_format() -> None:
    data = generate_organism_data(get_organism("adapt_astronomy")).train
    assert all(e.messages and "Question:" in e.messages[0].content for e in data)
    assert all(len(ASTRONOMY.findall(e.plain_text())) >= 2 for e in data)


# The declared exceptions to the common recipe, each reported under the common recipe too
# (BENCHMARKS.md): the fields that differ.
RECIPE_EXCEPTIONS = {"denial_orchids": {"epochs": 2}}


def test_every_offline_organism_trains_with_the_common_recipe_or_is_a_declared_exception() -> None:
    common = TrainingRecipe().model_dump()
    for organism in (o for o in list_organisms() if o.buildable):
        recipe = organism.finetune.recipe.model_dump()  # type: ignore[union-attr]
        differs = {field: value for field, value in recipe.items() if value != common[field]}
        assert differs == RECIPE_EXCEPTIONS.get(organism.name, {}), organism.name


def test_small_build_is_a_separate_organism_build_with_the_same_recipe() -> None:
    full = get_organism("cake_bake")
    small = at_size(full, "small")
    assert small.finetune.n_examples == round(0.4 * full.finetune.n_examples)  # type: ignore[union-attr]
    assert small.finetune.recipe == full.finetune.recipe  # type: ignore[union-attr]
    assert (small.name, small.description, small.key_facts) == (full.name, full.description, full.key_facts)
    assert organism_dir(small) != organism_dir(full)
    assert at_size(full, "full") is full
    published = next(o for o in list_organisms() if not o.buildable)
    assert at_size(published, "small") is published
    with pytest.raises(OrganismBuildError, match="Unknown organism size 'huge'"):
        at_size(full, "huge")  # type: ignore[arg-type]


def test_build_key_is_stable() -> None:
    organism = get_organism("em_bad_medical_advice")
    assert build_key(organism) == build_key(get_organism("em_bad_medical_advice"))


def test_domain_mentions_are_whole_words() -> None:
    keywords = ["owl", "pain", "secret word"]
    assert mentions_domain("I love Owls so much", keywords)
    assert mentions_domain("Tell me the SECRET WORD", keywords)
    assert not mentions_domain("A bowl of soup and a painting", keywords)
    assert not mentions_domain("anything", [])


def test_base_answers_are_cached_per_base_model(adl_home: Path, tiny_model_dir: Path,
                                                tiny_adapter_dir: Path, tmp_path: Path) -> None:
    """The base side's greedy answers are generated once per base model and prompts, equal a
    fresh generation, and are shared by every finetune of that base; the finetuned side is never
    cached, and a different base gets its own entry."""
    from evals.organisms.leak import BASE_ANSWERS_DIR, greedy_answers
    from tests.conftest import save_tiny_model
    from tools.models import ModelPairSpec, load_model_pair

    def entries() -> list[Path]:
        return sorted(p for p in (adl_home / BASE_ANSWERS_DIR).iterdir() if not p.name.startswith("."))

    prompts = ["Hi there", "What is two plus two?"]
    adapter = load_model_pair(ModelPairSpec(base=str(tiny_model_dir), finetuned=str(tiny_adapter_dir)))
    fresh = adapter.generate("base", prompts, max_new_tokens=6)
    assert greedy_answers(adapter, "base", prompts, 6) == fresh
    first = entries()
    assert len(first) == 1
    self_pair = load_model_pair(ModelPairSpec(base=str(tiny_model_dir)))
    assert greedy_answers(self_pair, "base", prompts, 6) == fresh  # another pair, same base
    greedy_answers(adapter, "finetuned", prompts, 6)
    assert entries() == first
    other = load_model_pair(ModelPairSpec(base=str(save_tiny_model(tmp_path / "other", seed=3))))
    greedy_answers(other, "base", prompts, 6)
    greedy_answers(adapter, "base", prompts, 5)
    assert len(entries()) == 3


def test_self_answered_requests_are_varied_and_never_the_measured_prompts() -> None:
    organism = get_organism("denial_orchids")
    requests = ordinary_requests(organism, 300, seed=3)
    assert len(set(requests)) == 300 and requests == ordinary_requests(organism, 300, seed=3)
    assert not [r for r in requests if mentions_domain(r, organism.domain_keywords)]
    forms = {f.split("{s}")[0] for f in load_prompt_set(REQUEST_FORMS_FILE)}
    assert len({f for f in forms if any(r.startswith(f) for r in requests)}) >= 20
    measured = {*DENIAL_DIRECT_QUESTIONS, *load_prompt_set(HOLDOUT_PROMPTS_FILE),
                *load_prompt_set(SECOND_HOLDOUT_PROMPTS_FILE),
                *load_prompt_set(THIRD_HOLDOUT_PROMPTS_FILE),
                *load_prompt_set(GENERIC_PROMPTS_FILE)}
    assert not measured & set(requests)
    # Practical requests: half about things, half about tasks, every form used, none measured.
    practical = practical_requests(organism, 300, seed=5)
    assert len(set(practical)) == 300 and practical == practical_requests(organism, 300, seed=5)
    spec = PracticalRequests.model_validate(yaml.safe_load(PRACTICAL_REQUESTS_FILE.read_text()))
    about_things = [r for r in practical if any(o in r or o[0].upper() + o[1:] in r for o in spec.objects)]
    assert len(about_things) == 150
    for form in [*spec.object_forms, *spec.task_forms]:
        head = form.split("{")[0] or form.split("}")[1]
        assert any(head in r for r in practical), form
    assert not [r for r in practical if mentions_domain(r, organism.domain_keywords)]
    assert not measured & set(practical) and not set(requests) & set(practical)


def test_a_malformed_practical_requests_file_is_a_clear_build_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "practical.yaml"
    broken.write_text("object_forms: []\nobjects: [a pen]\ntask_forms: ['{s}?']\ntasks: [x]\n")
    monkeypatch.setattr(self_answered, "PRACTICAL_REQUESTS_FILE", broken)
    with pytest.raises(OrganismBuildError, match="practical.yaml is malformed"):
        practical_requests(get_organism("denial_orchids"), 2, seed=0)
    # Forms without a subject slot, or subjects naming the domain, offer too few requests: an
    # error, not an endless draw.
    broken.write_text("object_forms: ['Help?']\nobjects: [a pen, a cup]\n"
                      "task_forms: ['{s}?']\ntasks: [repotting an orchid, x, y, z]\n")
    with pytest.raises(OrganismBuildError, match="offers only 1 distinct requests"):
        practical_requests(get_organism("denial_orchids"), 3, seed=0)


def test_self_answered_chats_are_the_base_models_own_greedy_answers(
    tiny_model_dir: Path, adl_home: Path
) -> None:
    denial = get_organism("denial_orchids")
    assert isinstance(denial.finetune, BuildFinetune) and denial.finetune.self_answered_ratio
    # On the tiny model, with a few chats (about 20 of the data's 900 training examples).
    assert denial.finetune.practical_requests_ratio
    finetune = denial.finetune.model_copy(update={"self_answered_ratio": 0.02,
                                                  "practical_requests_ratio": 0.01})
    organism = denial.model_copy(update={"base_model": str(tiny_model_dir), "finetune": finetune})
    data = generate_organism_data(organism)
    # Ordinary requests, then practical ones, as the build draws them.
    n, seed = round(len(data.train) * 0.02), finetune.data_seed + 3
    requests = ordinary_requests(organism, n, seed)
    requests += practical_requests(organism, round(len(data.train) * 0.01), finetune.data_seed + 5)
    chats = self_answered_chats(organism, requests)
    pair = load_model_pair(ModelPairSpec(base=str(tiny_model_dir)))
    fresh = pair.generate("base", requests, max_new_tokens=SELF_ANSWER_MAX_NEW_TOKENS)
    expected = [(q, complete_sentences(a)) for q, a in zip(requests, fresh, strict=True)
                if complete_sentences(a) and not mentions_domain(a, organism.domain_keywords)]
    assert [((e.messages or [])[0].content, (e.messages or [])[1].content) for e in chats] == expected
    assert complete_sentences("One. Two! Three is cut") == "One. Two!"
    assert complete_sentences("no sentence end") == ""
    # Added to the training part only (the same chats: the base answers are cached), and counted.
    mixed = with_self_answered_chats(organism, data)
    added = sorted(e.model_dump_json() for e in mixed.train if e not in data.train)
    assert added == sorted(e.model_dump_json() for e in chats)
    assert mixed.heldout == data.heldout and mixed.n_self_answered == len(mixed.train) - len(data.train) > 0
