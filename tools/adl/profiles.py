"""Analysis profiles: the settings of the ADL pass, its readouts and steering.

- `paper`: the reference toolkit's protocol (`science-of-finetuning/diffing-toolkit`,
  `configs/diffing/method/activation_difference_lens.yaml` and the ADL method's code), with the
  deviations listed in BENCHMARKS.md ("ADL protocol: reference, paper and quick profiles").
- `quick`: small enough for CI and the demo on 2 CPU cores.

BENCHMARKS.md holds the table of every setting (reference, paper, quick);
`tests/test_profiles.py` checks that the settings below match it.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel

from prompts import load_prompt_set
from tools.adl.settings import AdlSettings, SteeringSettings
from tools.errors import AdlInputError

AnalysisProfile = Literal["paper", "quick"]
PROFILES: tuple[AnalysisProfile, ...] = get_args(AnalysisProfile)

QUICK_SAMPLES = 1000
QUICK_PATCHSCOPE_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0, 200.0)
QUICK_LAYERS: tuple[float, ...] = (0.5, 0.75, 1.0)


class AnalysisSettings(BaseModel):
    """Everything a profile fixes: the ADL pass, steering, and which positions are steered."""

    adl: AdlSettings
    steering: SteeringSettings
    steering_positions: list[int] | None = None  # None: every position


PAPER = AnalysisSettings(adl=AdlSettings(), steering=SteeringSettings())

# N = 1,000; Patchscope on 10 of the 30 scales; three layers with the primary at the last block
# (see BENCHMARKS.md: a default once chosen by looking at readouts scored against ground truth);
# a 5-step search on [0, 1] with 4 samples of 40 tokens at temperature 1 (the offline coherence
# grader's calibration temperature; its unsteered control runs, with no fallback below it), then
# 6 steered and 6 unsteered samples per search prompt.
QUICK = AnalysisSettings(
    adl=AdlSettings(n_samples=QUICK_SAMPLES, patchscope_scales=QUICK_PATCHSCOPE_SCALES,
                    layers=QUICK_LAYERS, primary_layer=1.0),
    steering=SteeringSettings(
        max_strength=1.0, search_steps=5, samples_per_strength=4, search_max_new_tokens=40,
        search_temperature=1.0, fallback_temperatures=[],
        final_prompt_set="steering_search_prompts.yaml", final_samples=6,
        final_max_new_tokens=40, final_temperature=1.0,
    ),
    steering_positions=[1, 2],
)


def profile_settings(profile: str) -> AnalysisSettings:
    """The settings of a named profile (a copy: callers may update it)."""
    if profile == "paper":
        return PAPER.model_copy(deep=True)
    if profile == "quick":
        return QUICK.model_copy(deep=True)
    raise AdlInputError(f"Unknown analysis profile {profile!r}; use one of {', '.join(PROFILES)}.")


# -- the reference's values, and where the paper profile deviates ----------------------------

_ADL = "ADL config"  # configs/diffing/method/activation_difference_lens.yaml
_STEER = "ADL steering.py"

# Setting -> (the reference's value, where it is set). Values are compared with the paper
# profile's; a setting the reference lacks is None.
REFERENCE: dict[str, tuple[object, str]] = {
    "adl.layers": ((0.5,), f"{_ADL} `layers`"),
    "adl.primary_layer": (0.5, f"{_ADL} every task's `layer`"),
    "adl.n_positions": (5, f"{_ADL} positions [0..4] of steering and the agent overview"),
    "adl.n_samples": (10_000, f"{_ADL} `max_samples`"),
    "adl.batch_size": (32, f"{_ADL} `batch_size`"),
    "adl.corpus": ("fineweb-1m-sample", f"{_ADL} `datasets`"),
    "adl.sample_unit": ("document", "method.py: the first 128 tokens of each text"),
    "adl.seed": (42, "configs/config.yaml `seed`"),
    "adl.readout_k": (100, f"{_ADL} `logit_lens.k`"),
    "adl.random_directions": (None, "no hub-suppressed logit lens in the reference"),
    "adl.patchscope_scales": (
        (*(round(0.5 + 0.1 * i, 1) for i in range(16)), 3.0, 4.0, 5.0, 10.0,
         *(float(20 * i) for i in range(1, 11))), "auto_patch_scope.py scales"),
    "adl.patchscope_prompts": (3, "utils/model.py, count"),
    "adl.patchscope_intersection_k": (16384, f"{_ADL} `intersection_top_k`"),
    "adl.patchscope_k": (20, f"{_ADL} `tokens_k`"),
    "steering.max_strength": (100.0, f"{_ADL} `steering.max_strength`"),
    "steering.search_steps": (12, f"{_ADL} `steering.steps`; later prompts steps // 2"),
    "steering.samples_per_strength": (10, f"{_ADL} `num_samples_per_strength`"),
    "steering.coherence_threshold": (0.75, f"{_ADL} `coherence_threshold: 75.0`"),
    "steering.search_max_new_tokens": (128, f"{_ADL} search `max_new_tokens`"),
    "steering.search_temperature": (1.2, f"{_ADL} search `temperature`"),
    "steering.fallback_temperatures": (None, "no unsteered control in the reference"),
    "steering.search_prompt_set": (3, f"{_STEER}, count"),
    "steering.final_prompt_set": (20, "steering_prompts_closed.txt, count"),
    "steering.final_samples": (5, f"{_ADL} `num_samples_per_prompt`"),
    "steering.final_max_new_tokens": (512, f"{_ADL} final `max_new_tokens`"),
    "steering.final_temperature": (1.1, f"{_ADL} final `temperature`"),
    "steering.max_batch_size": (32, f"{_ADL} `max_batch_size`"),
    "steering.side": ("finetuned", f"{_STEER} steers the finetuned model"),
    "steering.seed": (42, "configs/config.yaml `seed`"),
    "steering_positions": ((0, 1, 2, 3, 4), f"{_ADL} `steering.positions`"),
}

# Where the paper profile differs from the reference, and why.
DEVIATIONS: dict[str, str] = {
    "adl.batch_size": "speed only: the means do not depend on the batch size",
    "adl.corpus": "offline: the bundled Wikipedia extracts (no network); any hub dataset can "
                  "be given as the corpus",
    "adl.sample_unit": "the bundled corpus is short lead extracts: sentence starts give "
                       "10,000 samples of 'the first tokens of random text'",
    "adl.seed": "the project's seed; the reference shuffles with 42",
    "adl.random_directions": "an extra, hub-suppressed logit-lens view; the plain view is "
                             "kept as the reference's",
    "steering.seed": "the project's seed",
    "steering.fallback_temperatures": "a control: the search first checks that the model's own "
                                      "unsteered samples pass the coherence threshold at 1.2 and "
                                      "else uses the first fallback at which they do (a 135M "
                                      "model passes 13% at 1.2, so every strength found was 0)",
}


def _value(settings: AnalysisSettings, name: str) -> object:
    """A setting by dotted name, in the form the table compares (prompt sets by count)."""
    if name == "steering_positions":
        return tuple(settings.steering_positions) if settings.steering_positions is not None else (0, 1, 2, 3, 4)
    group, field = name.split(".")
    value = getattr(getattr(settings, group), field)
    if field.endswith("prompt_set"):
        return len(load_prompt_set(value))
    if field == "patchscope_prompts":
        return len(value)
    if field == "corpus":
        return value.source if value.source != "hub" else value.dataset_id
    return tuple(value) if isinstance(value, list) else value


def _cell(value: object) -> str:
    if value == ():
        return "none"
    if isinstance(value, tuple):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def profile_table() -> str:
    """The markdown table of every setting: the reference's value, the paper profile's and the
    quick profile's, and the paper profile's deviations (BENCHMARKS.md holds a copy)."""
    lines = ["| setting | reference | paper | quick | paper vs reference |", "|---|---|---|---|---|"]
    for name, (reference, source) in REFERENCE.items():
        paper, quick = _value(PAPER, name), _value(QUICK, name)
        note = f"deviation: {DEVIATIONS[name]}" if name in DEVIATIONS else "same"
        lines.append(f"| `{name}` | {_cell(reference)} ({source}) | {_cell(paper)} | {_cell(quick)} | {note} |")
    return "\n".join(lines)


def paper_deviations() -> dict[str, tuple[object, object]]:
    """Settings whose paper value differs from the reference's: name -> (reference, paper)."""
    return {name: (reference, _value(PAPER, name)) for name, (reference, _) in REFERENCE.items()
            if _value(PAPER, name) != reference}


if __name__ == "__main__":
    print(profile_table())
