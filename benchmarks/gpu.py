"""The ADL difference pass at paper settings and one steering search on the accelerator present
(cuda if available, else the CPU), with the achieved FLOP/s as a fraction of that device's
matmul peak, measured in the same run in the run's dtype (`--dtype auto`: bfloat16 on a GPU, so
the bf16 peak; float32 on a CPU).

Paper settings (tools/adl/profiles.py, `paper`): N = 10,000 samples, positions 0..4, layer 0.5,
batch 512; the search is the reference's (`tools.adl.steering.search_strengths`): 12 bisections
on [0, 100] with the first search prompt, 6 with each other one, 10 samples of 128 tokens per
strength, at every position 0..4 of the primary layer, judged by the offline coherence grader,
after its unsteered control (the same samples unsteered, at 1.2 and the fallback temperatures
until one passes; counted in the search's time).

On a GPU machine, after `make setup` (the default pair is the offline cake_bake organism on
smollm2-135m-instruct; a machine whose $ADL_HOME lacks its build builds it on the CPU first,
minutes: copy `$ADL_HOME/organisms/cake_bake-*` over, or give --base/--finetuned):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --json gpu.json

Any model pair (a hub id, a folder or an offline short name; a LoRA adapter or a full
finetune); `--device-map auto` spreads a model larger than one GPU over the GPUs:

    .venv/bin/python benchmarks/gpu.py --base Qwen/Qwen3-1.7B --finetuned ORG/ADAPTER --json gpu.json
    .venv/bin/python benchmarks/gpu.py --base BIG --finetuned ORG/FT --device-map auto --json gpu.json

`--final-samples DIR` then times the steering's last part, the final samples at the searched
strengths (paper: 5 steered samples of up to 512 tokens per prompt and position on 20 prompts,
and as many unsteered), and writes them to DIR/steering.json: with the two parts above, most of
what one organism's paper-profile ADL costs on this device (the readouts are small).

At toy size on a CPU (tests/test_gpu_benchmark.py runs it with the tiny test model):

    .venv/bin/python benchmarks/gpu.py --toy --base MODEL_DIR --finetuned ADAPTER_DIR --json toy.json

FLOPs are those of the weight matmuls (2 x the block's projection and MLP weights per token;
generation adds the unembedding), not attention scores: a lower bound, close for the ADL pass
(5 tokens deep), a few percent low for generation. Tokens are counted as the model sees them
(padding included), by a forward pre-hook on the token embedding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tools.machine import device_name, matmul_peak_gflops, set_torch_threads, synchronize

# --toy: small enough for the suite on 2 CPU cores with the tiny test model.
TOY = {"samples": 64, "batch_size": 16, "search_steps": 2, "samples_per_strength": 2,
       "max_new_tokens": 8, "final_samples": 1, "positions": [1, 2], "peak_size": 256,
       "peak_repeats": 3}


def block_flops_per_token(config: Any) -> float:
    """Matmul FLOPs of one decoder block per token: attention projections and a gated MLP."""
    d, ff = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    return 2.0 * (2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * ff)


def model_flops_per_token(config: Any) -> float:
    """Matmul FLOPs of a full forward pass per token: every block and the unembedding."""
    unembed = 2.0 * config.hidden_size * config.vocab_size
    return config.num_hidden_layers * block_flops_per_token(config) + unembed


@contextlib.contextmanager
def count_tokens(pair: Any) -> Iterator[list[int]]:
    """Tokens the pair's models embed meanwhile (a one-element list, filled in as they run)."""
    count = [0]
    vocab = pair.config.vocab_size
    # The benchmark reaches into the pair's HF models (private to the backend) to hook them.
    models = {id(model): model for model in pair._models.values()}.values()
    embeddings = [module for model in models for module in model.modules()
                  if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab]

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        count[0] += args[0].numel()

    handles = [module.register_forward_pre_hook(hook) for module in embeddings]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _rate(flops: float, seconds: float, peak_gflops: float) -> dict[str, float]:
    achieved = flops / seconds / 1e9
    return {"seconds": round(seconds, 3), "gflop": round(flops / 1e9, 3),
            "achieved_gflops": round(achieved, 3),
            "fraction_of_peak": round(achieved / peak_gflops, 5)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organism", default="cake_bake", help="Offline organism (default pair).")
    parser.add_argument("--base", help="Base model: hub id, folder or offline short name.")
    parser.add_argument("--finetuned", help="Finetune of --base: adapter or full model.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on a CPU.")
    parser.add_argument("--device-map", default=None, help="auto, balanced, or a JSON object.")
    parser.add_argument("--backend", default="bridge", choices=["bridge", "hf-hooks"])
    parser.add_argument("--samples", type=int, default=None, help="Default: paper's 10,000.")
    parser.add_argument("--batch-size", type=int, default=None, help="Default: paper's 512.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    parser.add_argument("--toy", action="store_true", help="Toy size (CPU smoke test).")
    parser.add_argument("--json", type=Path, default=None, help="Write the result here.")
    parser.add_argument("--positions", type=int, nargs="+", default=None,
                        help="Steer these positions only (default: the profile's, 0..4).")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="Steering rows per generate call (default: the profile's 32, the "
                        "reference's; a memory setting: one search step is a single call from "
                        "samples per strength x positions x prompts rows).")
    parser.add_argument("--final-samples", type=Path, default=None, metavar="DIR",
                        help="Then time the steering's final samples at the searched strengths "
                        "(the profile's prompts, samples and length); written to DIR/steering.json.")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the result (and write it with --json)."""
    from prompts import load_prompt_set
    from tools.adl.coherence import OfflineCoherenceGrader
    from tools.adl.differences import (
        compute_activation_difference,
        resolve_layers,
        select_sample_tokens,
    )
    from tools.adl.pipeline import steering_direction
    from tools.adl.profiles import profile_settings
    from tools.adl.steering import search_strengths, unsteered_control
    from tools.corpus import load_corpus
    from tools.model_spec import ModelPairSpec, parse_load_options
    from tools.models import load_model_pair, torch_dtype

    args = _parser().parse_args(argv)
    threads = set_torch_threads(args.threads)
    options = parse_load_options(args.device, args.dtype, args.device_map)
    paper = profile_settings("paper")
    adl = paper.adl.model_copy(update={
        "n_samples": args.samples or (TOY["samples"] if args.toy else paper.adl.n_samples),
        "batch_size": args.batch_size or (TOY["batch_size"] if args.toy else paper.adl.batch_size)})
    steering = paper.steering
    if args.max_batch_size:
        steering = steering.model_copy(update={"max_batch_size": args.max_batch_size})
    positions = args.positions or paper.steering_positions or list(range(adl.n_positions))
    if args.toy:
        steering = steering.model_copy(update={
            "search_steps": TOY["search_steps"], "samples_per_strength": TOY["samples_per_strength"],
            "search_max_new_tokens": TOY["max_new_tokens"], "final_samples": TOY["final_samples"],
            "final_max_new_tokens": TOY["max_new_tokens"]})
        positions = args.positions or TOY["positions"]

    if args.base:
        spec = ModelPairSpec(base=args.base, finetuned=args.finetuned)
    else:
        from evals.organisms import get_organism
        from evals.organisms.build import organism_pair_spec

        spec = organism_pair_spec(get_organism(args.organism), load=options)  # built there if missing
    started = time.perf_counter()
    pair = load_model_pair(spec, options, backend=args.backend)
    load_seconds = time.perf_counter() - started
    device = pair.device
    dtype = torch_dtype(options)
    peak_size, peak_repeats = (TOY["peak_size"], TOY["peak_repeats"]) if args.toy else (
        (8192, 10) if device.type != "cpu" else (2048, 10))
    peak = matmul_peak_gflops(peak_size, peak_repeats, dtype=dtype, device=device)

    # The ADL difference pass (a warm-up batch first: kernel selection, allocator).
    corpus = load_corpus(adl.corpus)
    tokens = select_sample_tokens(pair.tokenizer, corpus.samples("diff", unit=adl.sample_unit),
                                  adl.n_positions, adl.n_samples, adl.seed)
    layers = resolve_layers(adl.layers, pair.n_layers)
    compute_activation_difference(pair, tokens[: adl.batch_size], layers,
                                  batch_size=adl.batch_size, show_progress=False)
    synchronize(device)
    started = time.perf_counter()
    difference = compute_activation_difference(pair, tokens, layers, batch_size=adl.batch_size,
                                               show_progress=False)
    synchronize(device)
    adl_seconds = time.perf_counter() - started
    adl_flops = 2 * tokens.numel() * (max(layers) + 1) * block_flops_per_token(pair.config)

    # One steering search at the primary layer.
    layer = resolve_layers([adl.primary_layer], pair.n_layers)[0]
    directions = {p: steering_direction(difference, layer, p) for p in positions}
    grader = OfflineCoherenceGrader(pair)
    search_prompts = load_prompt_set(steering.search_prompt_set)
    with count_tokens(pair) as seen:
        synchronize(device)
        started = time.perf_counter()
        control = unsteered_control(pair, grader, search_prompts, layer, steering)
        synchronize(device)
        control_seconds = time.perf_counter() - started
        steering = control.applied(steering)
        found = search_strengths(pair, grader, search_prompts, directions, layer, steering)
        synchronize(device)
        search_seconds = time.perf_counter() - started
    peak = max(peak, matmul_peak_gflops(peak_size, peak_repeats, dtype=dtype, device=device))

    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "device_map": options.device_map,
        "peak_dtype": str(dtype).removeprefix("torch."),
        "peak_gflops": round(peak, 1),
        "torch": torch.__version__,
        "torch_threads": threads,
        "backend": args.backend,
        "toy": args.toy,
        "model": {"base": spec.base, "finetuned": spec.finetuned, "n_layers": pair.n_layers,
                  "d_model": pair.d_model, "parameter_bytes": pair.parameter_bytes(),
                  "load_seconds": round(load_seconds, 1)},
        "adl": {"samples": int(tokens.shape[0]), "positions": adl.n_positions, "layers": layers,
                "batch_size": adl.batch_size, "tokens": 2 * tokens.numel(),
                "delta_norm": round(float(difference.delta(layers[0], adl.n_positions - 1).norm()), 4),
                **_rate(adl_flops, adl_seconds, peak)},
        "steering": {"layer": layer, "positions": positions, "search_steps": steering.search_steps,
                     "samples_per_strength": steering.samples_per_strength,
                     "max_new_tokens": steering.search_max_new_tokens,
                     "max_batch_size": steering.max_batch_size,
                     "control_seconds": round(control_seconds, 2),
                     "search_prompts": len(search_prompts), "tokens": seen[0],
                     "control": control.model_dump(),
                     "strengths": {str(p): {q[:40]: v for q, v in by.items()}
                                   for p, by in found.items()},
                     **_rate(seen[0] * model_flops_per_token(pair.config), search_seconds, peak)},
    }
    print(f"{result['device_name']} ({result['device']}, {result['dtype']}): matmul peak "
          f"{peak:.1f} GFLOP/s, torch threads {threads}")
    for part in ("adl", "steering"):
        r = result[part]
        print(f"  {part:9s} {r['seconds']:9.2f} s  {r['gflop']:10.4g} GFLOP  "
              f"{r['achieved_gflops']:9.4g} GFLOP/s  {100 * r['fraction_of_peak']:6.2f}% of peak")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.final_samples:
        result["final_samples"] = final_samples(pair, found, directions, layer, steering,
                                                control, args.final_samples)
        final = result["final_samples"]
        print(f"  final samples {final['seconds']:9.2f} s  {final['rows']} rows of up to "
              f"{final['max_new_tokens']} tokens")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return result


def final_samples(pair: Any, found: dict[int, dict[str, float]], directions: dict[int, Any],
                  layer: int, steering: Any, control: Any, folder: Path) -> dict[str, Any]:
    """The steering's final samples at the searched strengths, timed: `final_samples` steered
    samples per final prompt and position and as many unsteered ones per prompt (the last part
    of an organism's steering, after the search); written to `folder`/steering.json."""
    from prompts import load_prompt_set
    from tools.adl.steering import sample_at_strengths

    prompts = load_prompt_set(steering.final_prompt_set)
    synchronize(pair.device)
    started = time.perf_counter()
    results = sample_at_strengths(pair, found, prompts, directions, layer, steering, control)
    synchronize(pair.device)
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steering.json").write_text(json.dumps([r.model_dump() for r in results], indent=2))
    steered = sum(len(sample.steered) for r in results for sample in r.samples)
    return {"seconds": round(seconds, 2), "prompts": len(prompts),
            "samples_per_prompt": steering.final_samples,
            "max_new_tokens": steering.final_max_new_tokens,
            "rows": steered + len(prompts) * steering.final_samples,
            "strengths": {str(r.position): r.strength for r in results}}


if __name__ == "__main__":
    main()
