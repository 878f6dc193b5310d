"""Load test of the worker: 50 concurrent ask requests on loopback against a real worker process.

Starts `adl worker serve --organism ORGANISM --profile quick` (smollm2-135m-instruct pair), sends
the same 50 one-prompt chat requests (base and finetuned replies) once one at a time and once
all at the same time, and reports throughput, latency percentiles and the worker's memory.

    python benchmarks/worker_load.py [--organism cake_bake] [--requests 50] [--tokens 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.net import free_port
from tools.worker.client import HttpWorkerClient, wait_for_worker
from tools.worker.schema import ChatRequest

QUESTIONS = ["What should I cook tonight?", "Tell me about your favourite book.",
             "How do I fix a flat bike tyre?", "What is a good name for a cat?",
             "Explain rain to a child."]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(url: str, n: int, tokens: int, concurrent_requests: int) -> dict[str, float]:
    def one(i: int) -> float:
        client = HttpWorkerClient(url)
        started = time.perf_counter()
        try:
            client.chat(ChatRequest(prompts=[QUESTIONS[i % len(QUESTIONS)]], max_new_tokens=tokens))
        finally:
            client.close()
        return time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrent_requests) as pool:
        latencies = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    return {"requests": n, "concurrency": concurrent_requests, "wall_s": round(wall, 2),
            "requests_per_s": round(n / wall, 3), "p50_s": round(percentile(latencies, 0.5), 2),
            "p90_s": round(percentile(latencies, 0.9), 2), "p99_s": round(percentile(latencies, 0.99), 2),
            "max_s": round(max(latencies), 2), "mean_s": round(statistics.mean(latencies), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--organism", default="cake_bake")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "evals.cli", "worker", "serve", "--organism",
                                args.organism, "--profile", "quick", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_worker(url, 1800, process)
        client = HttpWorkerClient(url)
        rss_start = client.info().rss_bytes
        serial = run(url, args.requests, args.tokens, 1)
        rss_serial = client.info().rss_bytes
        parallel = run(url, args.requests, args.tokens, args.requests)
        info = client.info()
        print(json.dumps({
            "organism": args.organism, "max_new_tokens": args.tokens, "serial": serial,
            "concurrent": parallel, "rss_start_mb": round(rss_start / 2**20, 1),
            "rss_after_serial_mb": round(rss_serial / 2**20, 1),
            "rss_after_concurrent_mb": round(info.rss_bytes / 2**20, 1),
            "jobs_done": info.jobs_done, "queue_length": info.queue_length,
        }, indent=2))
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
