"""`evals/configs/offline_quick.yaml` in process and on a local two-node Ray cluster, side by side.

Both runs start from warm caches (organisms built, ADL and steering computed by a preparation
step that is timed separately), so they compare how the grid is executed, not what it computes.
The Ray cluster is Ray's own multi-node utility on this machine: a head and a second node of one
CPU each; each organism's worker actor reserves one CPU (one torch thread), so two organisms run
at once. In process, one worker at a time uses every core.

    .venv/bin/python benchmarks/ray_grid.py [--size small] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from evals.runs import load_eval_config, run_experiment
from evals.store import open_store

CONFIG = Path(__file__).resolve().parents[1] / "evals" / "configs" / "offline_quick.yaml"


def prepare(config, size: str) -> dict[str, float]:
    """Build every organism and fill its ADL and steering cache (a worker started and closed)."""
    from evals.workers import organism_worker_config
    from tools.worker.service import AdlService

    seconds = {}
    for organism in config.organisms:
        start = time.perf_counter()
        AdlService.start(organism_worker_config(organism, config.profile, size=size)).close()
        seconds[organism] = round(time.perf_counter() - start, 1)
        print(f"prepared {organism} in {seconds[organism]} s", flush=True)
    return seconds


def grades(store, name: str) -> dict[str, float]:
    experiment = store.find_experiment(name)
    return {run.unit_key: store.grades(run.id)[0].score for run in store.runs(experiment.id)
            if store.grades(run.id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budgets", type=int, nargs="+", help="Only these budgets (default: the config's).")
    args = parser.parse_args()
    config = load_eval_config(CONFIG).model_copy(update={"organism_size": args.size})
    if args.budgets:
        config = config.model_copy(update={"budgets": args.budgets})
    report: dict[str, object] = {"config": str(CONFIG.name), "size": args.size, "budgets": config.budgets,
                                 "units": len(config.organisms) * len(config.agents) * len(config.budgets)}
    start = time.perf_counter()
    report["prepare_s"] = prepare(config, args.size)
    report["prepare_total_s"] = round(time.perf_counter() - start, 1)

    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder)
        store = open_store(f"sqlite:///{results / 'adl.db'}")
        local = config.model_copy(update={"name": "bench-local", "executor": "local"})
        start = time.perf_counter()
        summary = run_experiment(local, results, store)
        report["in_process_s"] = round(time.perf_counter() - start, 1)
        report["in_process_failed"] = summary.failed
        print(json.dumps(report, default=str), flush=True)  # kept if the Ray part fails

        import ray
        from ray.cluster_utils import Cluster

        start = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False)
        report["cluster_start_s"] = round(time.perf_counter() - start, 1)
        try:
            on_ray = config.model_copy(update={
                "name": "bench-ray", "executor": "ray",
                "ray": config.ray.model_copy(update={"address": cluster.address})})
            start = time.perf_counter()
            summary = run_experiment(on_ray, results, store)
            report["ray_s"] = round(time.perf_counter() - start, 1)
            report["ray_failed"] = summary.failed
            report["placements"] = [p.model_dump() for p in summary.placements]
        finally:
            ray.shutdown()
            cluster.shutdown()
        local_grades, ray_grades = grades(store, "bench-local"), grades(store, "bench-ray")
        report["grades_identical"] = local_grades == ray_grades
        report["grades_differing"] = sorted(k for k in local_grades if local_grades[k] != ray_grades.get(k))
        # Where the time goes on Ray: each unit's wall time from its transcript, and the
        # actors' start (model load) from the gap before each organism's first unit.
        for name in ("bench-local", "bench-ray"):
            experiment = store.find_experiment(name)
            runs = store.runs(experiment.id)
            report[f"{name}_unit_s_sum"] = round(sum(
                (r.finished_at - r.started_at).total_seconds() for r in runs if r.finished_at), 1)
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
