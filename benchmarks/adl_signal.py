"""ADL signal on every offline organism against controls (numbers for BENCHMARKS.md).

    .venv/bin/python benchmarks/adl_signal.py [--samples 1000] [--no-steering] [--json out.json]

Same configuration as tests/test_adl_signal.py, so after the tests it reads their cache.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from evals.adl_signal import (
    SIGNAL_SAMPLES,
    SIGNAL_STEERING,
    SIGNAL_STEERING_POSITIONS,
    measure_signal,
)
from tools.adl.pipeline import AdlSettings

ORGANISMS = ["cake_bake", "cake_bake_mix1-1p0", "em_bad_medical_advice", "taboo_gold", "preference_owl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=SIGNAL_SAMPLES)
    parser.add_argument("--no-steering", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    settings = AdlSettings(n_samples=args.samples)
    steering = None if args.no_steering else SIGNAL_STEERING
    reports = []
    for name in ORGANISMS:
        start = time.perf_counter()
        report = measure_signal(name, settings, steering, SIGNAL_STEERING_POSITIONS)
        reports.append(report)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    header = ("| organism | primary layer | relevance LL / LL-suppressed / Patchscope | "
              "self-pair control | generic-finetune control | relevance by layer (LL-suppressed) | "
              "rel. delta norm | steering sim. steered / unsteered |")
    print(header)
    print("|" + "---|" * 8)
    for r in reports:
        by_layer = ", ".join(f"L{x.layer}: {x.logit_lens_suppressed:.2f}" for x in r.relevance_by_layer)
        steer = (f"{r.steering_steered:.3f} / {r.steering_unsteered:.3f}"
                 if r.steering_steered is not None else "-")
        print(f"| {r.organism} | {r.primary_layer} | {r.relevance.logit_lens:.2f} / "
              f"{r.relevance.logit_lens_suppressed:.2f} / {r.relevance.patchscope:.2f} | "
              f"{r.control_self.logit_lens:.2f} / {r.control_self.logit_lens_suppressed:.2f} | "
              f"{r.control_generic.logit_lens:.2f} / {r.control_generic.logit_lens_suppressed:.2f} | "
              f"{by_layer} | {r.relative_delta_norm:.3f} | {steer} |")
    if args.json:
        args.json.write_text(json.dumps([r.model_dump() for r in reports], indent=2))


if __name__ == "__main__":
    main()
