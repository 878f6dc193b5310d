"""Memory of a model pair: one shared base with a switchable LoRA adapter versus two models.

Each configuration runs in a fresh interpreter so peak RSS is its own. Prints a table and
writes JSON (for BENCHMARKS.md).

    .venv/bin/python benchmarks/model_pair_memory.py [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, torch
from tools.models import ModelPairSpec, FinetuneKind, load_model_pair
spec = ModelPairSpec.model_validate_json(sys.argv[1])
pair = load_model_pair(spec)
ids = pair.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
with torch.no_grad():
    for side in ("base", "finetuned"):
        pair.logits(side, ids)
print(json.dumps({
    "parameter_bytes": pair.parameter_bytes(),
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "shares_base_weights": pair.shares_base_weights,
}))
"""


def make_adapter_and_checkpoint(model_name: str, out: Path) -> tuple[Path, Path]:
    """A LoRA adapter (r=8 on all projections, non-zero) and the same finetune merged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.models import resolve_model_location

    location = resolve_model_location(model_name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(location)
    config = LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out / "checkpoint")
    AutoTokenizer.from_pretrained(location).save_pretrained(out / "checkpoint")
    return out / "adapter", out / "checkpoint"


def measure(spec_json: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, spec_json], capture_output=True, text=True, check=True,
        cwd=Path(__file__).parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from tools.models import FinetuneKind, ModelPairSpec

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter, checkpoint = make_adapter_and_checkpoint(args.model, Path(tmp))
        results = {
            "adapter (one shared base)": measure(ModelPairSpec(
                base=args.model, finetuned=str(adapter), finetune_kind=FinetuneKind.ADAPTER
            ).model_dump_json()),
            "two full models": measure(ModelPairSpec(
                base=args.model, finetuned=str(checkpoint), finetune_kind=FinetuneKind.CHECKPOINT
            ).model_dump_json()),
        }
    print(f"model: {args.model}")
    print(f"{'pair':30s} {'parameters MB':>14s} {'peak RSS MB':>12s}")
    for name, r in results.items():
        print(f"{name:30s} {r['parameter_bytes'] / 1e6:14.1f} {r['peak_rss_bytes'] / 1e6:12.1f}")
    shared, double = results["adapter (one shared base)"], results["two full models"]
    print(
        f"saved by sharing: {(double['parameter_bytes'] - shared['parameter_bytes']) / 1e6:.1f} MB "
        f"of parameters, {(double['peak_rss_bytes'] - shared['peak_rss_bytes']) / 1e6:.1f} MB peak RSS"
    )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()
