"""Wall time of `adl investigate` on an offline pair, fresh (no cached ADL) and cached.

The finetune is the small cake_bake organism's LoRA adapter, copied to a new folder so that its
ADL is not in the cache (the cache key names the adapter's path); the base model conversion is
already cached (it is a one-time step of every offline model, timed in BENCHMARKS.md). Both runs
use the quick profile, both agents, the heuristic policy and budget 5.

    .venv/bin/python benchmarks/investigate.py [--profile quick] [--budget 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evals.organisms import get_organism
from evals.organisms.build import at_size, build_organism
from tools.machine import machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--budget", type=int, default=5)
    args = parser.parse_args()
    built = build_organism(at_size(get_organism("cake_bake"), "small"), show_progress=False)
    adl = Path(sys.executable).with_name("adl")
    with tempfile.TemporaryDirectory() as folder:
        adapter = Path(folder) / "my-cake-adapter"
        shutil.copytree(built / "adapter", adapter)
        times = {}
        for run in ("fresh", "cached"):
            started = time.perf_counter()
            subprocess.run([str(adl), "investigate", "--base", "smollm2-135m-instruct", "--finetune",
                            str(adapter), "--provider", "heuristic", "--budget", str(args.budget),
                            "--profile", args.profile, "--ask-max-new-tokens", "128",
                            "--out", str(Path(folder) / f"report-{run}")],
                           check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            times[run] = round(time.perf_counter() - started, 1)
        steps = json.loads((Path(folder) / "report-fresh" / "report.json").read_text())["timings"]
    result = {"machine": machine_line(), "profile": args.profile, "budget": args.budget,
              "wall_s": times, "fresh_steps": steps}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
