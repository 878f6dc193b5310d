"""One ADL difference pass at paper settings versus the naive way, side by side.

Paper settings: N = 10,000 samples, positions 0..4, layer 0.5 (block 15 of smollm2's 30),
base and finetuned model (the cake_bake organism: a LoRA adapter). The naive way is how the
reference toolkit computes it: full 128-token sequences through every layer including the
output logits, batch 32, fp32, all positions kept until the mean; it is timed on a subset in
the same run and extrapolated per sample. The machine's fp32 matmul peak is measured in the
same run too, and the achieved FLOP/s of the fast pass is reported as a fraction of it.

    .venv/bin/python benchmarks/adl_difference.py [--samples 10000] [--naive-samples 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tools.machine import matmul_peak_gflops


def layer_flops_per_token(config) -> float:
    """Multiply-add FLOPs of one decoder block per token (projections; attention over 5
    tokens is negligible)."""
    d, ff = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2
    return 2.0 * (attn + 3 * d * ff)


def naive_seconds_per_sample(base_location: str, adapter_dir: Path, tokenizer, documents: list[str],
                             n: int, length: int = 128, batch: int = 32) -> float:
    """Time the toolkit's way on `n` samples: full sequences, all layers, logits, all
    positions stored, both models. It runs plain HF models loaded here, outside the project's
    backend (as the toolkit does): the base model and the base model with the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = {
        "base": AutoModelForCausalLM.from_pretrained(base_location).eval(),
        "finetuned": PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_location), adapter_dir).eval(),
    }
    encoded = tokenizer(documents[:n], truncation=True, max_length=length, padding="max_length",
                        return_tensors="pt")
    start = time.perf_counter()
    with torch.inference_mode():
        for model in models.values():
            kept = []
            for i in range(0, n, batch):
                out = model(input_ids=encoded.input_ids[i : i + batch],
                            attention_mask=encoded.attention_mask[i : i + batch],
                            output_hidden_states=True)
                kept.append(out.hidden_states[16].clone())
            torch.cat(kept).mean(0)
    return (time.perf_counter() - start) / n


def main() -> None:
    from evals.organisms import get_organism
    from evals.organisms.build import ADAPTER_DIR, load_organism_pair, organism_dir
    from tools.adl.differences import (
        compute_activation_difference,
        resolve_layers,
        select_sample_tokens,
    )
    from tools.corpus import load_corpus

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--organism", default="cake_bake")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--naive-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    organism = get_organism(args.organism)
    pair = load_organism_pair(organism)
    corpus = load_corpus()
    sentences = corpus.samples("diff", unit="sentence")
    peak = matmul_peak_gflops()
    layer = resolve_layers([0.5], pair.n_layers)[0]

    start = time.perf_counter()
    tokens = select_sample_tokens(pair.tokenizer, sentences, 5, args.samples)
    difference = compute_activation_difference(pair, tokens, [layer], batch_size=args.batch_size,
                                               show_progress=False)
    fast_seconds = time.perf_counter() - start
    flops = layer_flops_per_token(pair.config) * (layer + 1) * tokens.numel() * 2
    achieved = flops / fast_seconds / 1e9

    naive_per_sample = naive_seconds_per_sample(
        pair.base_location, organism_dir(organism) / ADAPTER_DIR, pair.tokenizer,
        corpus.split("diff"), args.naive_samples)
    naive_seconds = naive_per_sample * args.samples
    peak_after = matmul_peak_gflops()
    result = {
        "organism": args.organism,
        "samples": args.samples,
        "positions": 5,
        "layer": layer,
        "fast_seconds": round(fast_seconds, 1),
        "naive_seconds_extrapolated": round(naive_seconds, 1),
        "naive_samples_timed": args.naive_samples,
        "speedup": round(naive_seconds / fast_seconds, 1),
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(max(peak, peak_after), 1),
        "fraction_of_peak": round(achieved / max(peak, peak_after), 3),
        "delta_norm_position_1": round(float(difference.delta(layer, 1).norm()), 2),
        "threads": torch.get_num_threads(),
    }
    for key, value in result.items():
        print(f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
