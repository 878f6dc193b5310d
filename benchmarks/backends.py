"""The two model backends side by side (`tools/backend.py`): load time, a bulk residual pass and
chat generation, on the offline smollm2-135m-instruct with a LoRA adapter (r=8, all projections,
non-zero, made here). Each backend in a fresh interpreter.

    .venv/bin/python benchmarks/backends.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
from tools.models import ModelPairSpec, load_model_pair
torch.set_num_threads(2)
backend, adapter = sys.argv[1], sys.argv[2]
start = time.perf_counter()
pair = load_model_pair(ModelPairSpec(base="smollm2-135m-instruct", finetuned=adapter), backend=backend)
load = time.perf_counter() - start
ids = torch.randint(100, 10_000, (512, 6), generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
for side in ("base", "finetuned"):
    pair.stream_residuals(side, [ids[:256], ids[256:]], [15], lambda batch, residuals: None)
residuals = time.perf_counter() - start
prompts = ["Tell me about the weather today.", "What is a good breakfast?",
           "How do I learn to swim?", "Write a short poem about trains."] * 2
start = time.perf_counter()
replies = pair.generate("finetuned", prompts, max_new_tokens=48)
generate = time.perf_counter() - start
print(json.dumps({"backend": backend, "load_s": round(load, 2), "residuals_s": round(residuals, 2),
                  "generate_s": round(generate, 2), "first_reply": replies[0][:60]}))
"""


def make_adapter(out: Path) -> Path:
    """A non-zero LoRA adapter on smollm2-135m-instruct (as in model_pair_memory.py)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tools.models import resolve_model_location

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_location("smollm2-135m-instruct"))
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(out)
    return out


def main() -> None:
    from tools.backend import BACKENDS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(Path(tmp) / "adapter")
        results = []
        for backend in sorted(BACKENDS):
            out = subprocess.run([sys.executable, "-c", CHILD, backend, str(adapter)],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
