"""The analysis profiles against the reference toolkit's protocol, and the layer rule's inputs."""

from __future__ import annotations

import inspect
from pathlib import Path

from prompts import load_prompt_set
from tools.adl.pipeline import (
    AdlReadouts,
    AdlSettings,
    LayerReadouts,
    PositionReadout,
    choose_primary_layer,
)
from tools.adl.profiles import (
    DEVIATIONS,
    REFERENCE,
    paper_deviations,
    profile_settings,
    profile_table,
)
from tools.adl.readouts import IDENTITY_PROMPTS, TokenScore
from tools.adl.steering import SteeringSettings

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def test_every_setting_is_in_the_table() -> None:
    names = {f"adl.{f}" for f in AdlSettings.model_fields} | {f"steering.{f}" for f in SteeringSettings.model_fields}
    assert names | {"steering_positions"} == set(REFERENCE)


def test_the_paper_profile_is_the_reference_apart_from_documented_deviations() -> None:
    assert set(paper_deviations()) == set(DEVIATIONS)
    paper = profile_settings("paper")
    assert paper.adl.patchscope_prompts == IDENTITY_PROMPTS
    assert load_prompt_set(paper.steering.search_prompt_set)[0] == "Tell me a story?"
    assert len(load_prompt_set(paper.steering.final_prompt_set)) == 20


def test_benchmarks_holds_the_current_table() -> None:
    assert profile_table() in BENCHMARKS.read_text(encoding="utf-8"), (
        "Regenerate the table in BENCHMARKS.md with `python -m tools.adl.profiles`."
    )


def _readouts(layers: dict[int, list[list[str]]]) -> AdlReadouts:
    def position(i: int, words: list[str]) -> PositionReadout:
        tokens = [TokenScore(token=w, token_id=j, probability=0.1) for j, w in enumerate(words)]
        return PositionReadout(position=i, delta_norm=1.0, logit_lens=tokens, logit_lens_suppressed=tokens,
                               patchscope={"1.0": tokens}, patchscope_scale=1.0)

    return AdlReadouts(n_layers_model=30, primary_layer=min(layers), layers=[
        LayerReadouts(layer=layer, reference_norm=1.0, token_coherence=0.0,
                      positions=[position(i, words) for i, words in enumerate(rows)])
        for layer, rows in layers.items()
    ])


def test_the_layer_rule_sees_readouts_only_and_prefers_what_the_control_lacks() -> None:
    parameters = inspect.signature(choose_primary_layer).parameters
    assert [p.annotation for p in parameters.values()] == ["AdlReadouts", "AdlReadouts", "int"]
    fields = " ".join(AdlReadouts.model_fields) + " ".join(LayerReadouts.model_fields) + " ".join(PositionReadout.model_fields)
    assert not any(word in fields for word in ("description", "truth", "organism", "fact"))

    hub = ["the", "of", "and", "in"]
    pair = _readouts({14: [hub, hub, hub], 21: [hub, hub, ["a", "b", "c", "d"]], 29: [hub, ["w", "x", "y", "z"], ["w", "x", "y", "q"]]})
    control = _readouts({14: [hub], 21: [hub], 29: [hub]})
    choice = choose_primary_layer(pair, control)
    assert choice.layer == 29 and choice.scores[14] == 0.0
    # Ties go to the layer nearest the reference's relative 0.5 (block 14 of 30).
    assert choose_primary_layer(control, control).layer == 14
