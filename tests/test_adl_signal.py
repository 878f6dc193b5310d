"""Acceptance of the ADL engine on the offline organisms (slow: real models).

The readouts carry each organism's domain clearly above both controls; steered samples are
closer to the finetuning data than unsteered ones; 1:1 mixing weakens the signal.
"""

from __future__ import annotations

import pytest

from evals.adl_signal import (
    SIGNAL_SAMPLES,
    SIGNAL_STEERING,
    SIGNAL_STEERING_POSITIONS,
    SignalReport,
    measure_signal,
)
from tools.adl.pipeline import AdlSettings

pytestmark = pytest.mark.slow

ORGANISMS = ["cake_bake", "em_bad_medical_advice", "taboo_gold", "preference_owl"]
SETTINGS = AdlSettings(n_samples=SIGNAL_SAMPLES)


@pytest.fixture(scope="module")
def reports() -> dict[str, SignalReport]:
    return {
        name: measure_signal(name, SETTINGS, SIGNAL_STEERING, SIGNAL_STEERING_POSITIONS)
        for name in [*ORGANISMS, "cake_bake_mix1-1p0"]
    }


def _best(scores) -> float:
    return max(scores.logit_lens, scores.logit_lens_suppressed)


@pytest.mark.parametrize("name", ORGANISMS)
def test_readouts_carry_the_domain_above_controls(reports: dict[str, SignalReport], name: str) -> None:
    report = reports[name]
    assert _best(report.relevance) >= _best(report.control_generic) + 0.1, report
    assert _best(report.relevance) >= _best(report.control_self) + 0.1, report


@pytest.mark.parametrize("name", ORGANISMS)
def test_steered_samples_move_toward_the_finetuning_data(
    reports: dict[str, SignalReport], name: str
) -> None:
    report = reports[name]
    assert report.steering_steered is not None and report.steering_unsteered is not None
    assert report.steering_steered > report.steering_unsteered, report


def test_mixing_weakens_the_signal(reports: dict[str, SignalReport]) -> None:
    mixed, plain = reports["cake_bake_mix1-1p0"], reports["cake_bake"]
    assert _best(mixed.relevance) < _best(plain.relevance), (mixed, plain)
