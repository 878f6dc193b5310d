"""The real-model signal test (slow): the suite's organism (a small build of cake_bake) reads
its domain clearly above the generic-text control, steered samples move toward its finetuning
data, and the same check fails when the activation difference is replaced by zeros (so it can
fail). That zeroed difference is also the self-pair control: the base model diffed with itself
has a difference of exactly zero at every layer, so its readouts are the zeroed ones. The suite
therefore does not run the self-pair's ADL separately (`make bench-science` does).

Every offline organism at full size, the mixed twin and the full steering search are measured
by `make bench-science` (benchmarks/science.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from evals.adl_signal import (
    SIGNAL_ADL,
    SIGNAL_STEERING,
    SIGNAL_STEERING_POSITIONS,
    SignalReport,
    domain_above_controls,
    measure_signal,
    relevance_at,
    truth_of,
)
from evals.organisms import get_organism
from evals.organisms.build import at_size, load_organism_pair
from tests.conftest import SUITE_ORGANISM, SUITE_SIZE
from tools.adl.pipeline import compute_readouts, run_adl

pytestmark = pytest.mark.slow

SETTINGS = SIGNAL_ADL


@pytest.fixture(scope="module")
def report(suite_organisms: dict[str, Path]) -> SignalReport:
    return measure_signal(SUITE_ORGANISM, SETTINGS, SIGNAL_STEERING, SIGNAL_STEERING_POSITIONS,
                          size=SUITE_SIZE, controls=("generic",))


def test_readouts_carry_the_domain_above_controls(report: SignalReport) -> None:
    assert report.control_self is None  # measured as the zeroed difference below
    assert domain_above_controls(report), report


def test_steered_samples_move_toward_the_finetuning_data(report: SignalReport) -> None:
    assert report.steering_steered is not None and report.steering_unsteered is not None
    assert report.steering_steered > report.steering_unsteered, report


def test_the_signal_check_fails_on_a_zero_difference(report: SignalReport) -> None:
    """The same readouts and check, with the mean difference at the primary layer set to zero
    (what the self-pair control gives): the domain is no longer read above the controls, and the
    organism's readout is above the zeroed one by the margin."""
    organism = at_size(get_organism(SUITE_ORGANISM), SUITE_SIZE)
    pair = load_organism_pair(organism)
    artifact = run_adl(pair, SETTINGS, show_progress=False)  # cached by the report
    difference, primary = artifact.difference, report.primary_layer
    index = difference.layer_index(primary)
    only = slice(index, index + 1)
    zero = dataclasses.replace(
        difference, layers=[primary], mean_diff=torch.zeros_like(difference.mean_diff[only]),
        mean_base=difference.mean_base[only], mean_finetuned=difference.mean_finetuned[only],
        norm_base=difference.norm_base[only], norm_finetuned=difference.norm_finetuned[only],
    )
    readouts = compute_readouts(pair, zero, SETTINGS, primary)
    zeroed = artifact.model_copy(update={"readouts": readouts, "difference": zero})
    zero_report = report.model_copy(update={"relevance": relevance_at(zeroed, truth_of(organism), primary)})
    assert domain_above_controls(report.model_copy(update={"control_self": zero_report.relevance}))
    assert not domain_above_controls(zero_report), zero_report.relevance
