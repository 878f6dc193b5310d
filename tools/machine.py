"""What a run's timings should be read against: the machine's fp32 matmul peak and threads."""

from __future__ import annotations

import time

import torch


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GEMM throughput of this machine (GFLOP/s), with torch's current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def machine_line() -> str:
    """One line for logs and reports: matmul peak and torch threads."""
    return (f"fp32 matmul peak {matmul_peak_gflops():.0f} GFLOP/s, "
            f"torch threads {torch.get_num_threads()}")
