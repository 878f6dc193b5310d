"""What a run's timings should be read against: the machine's matmul peak and threads, and
the torch thread count of a process sharing the machine (`set_torch_threads`)."""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from pathlib import Path

import torch

from tools.errors import AdlInputError

log = logging.getLogger(__name__)


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> float:
    """Best GEMM throughput (GFLOP/s) of `size` x `size` matrices in `dtype` on `device`, with
    torch's current threads (default: fp32 on the CPU). On an accelerator it warms up first and
    times 20 products between synchronisations."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    inner = 1 if device.type == "cpu" else 20
    if device.type != "cpu":
        a @ b
        synchronize(device)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = max(best, inner * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on `device` (an accelerator runs asynchronously)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: str | torch.device = "cpu") -> str:
    """A readable name of the device: the GPU's name, or the CPU's model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def cpu_share() -> int:
    """The CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's limit) when one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (None: `cpu_share()`, this process's CPUs) and
    return it. A process sharing the machine should use its share: two processes of two
    threads each on 2 cores made one steering search 12x slower (issue 18)."""
    threads = cpu_share() if n is None else n
    if threads < 1:
        raise AdlInputError(f"torch threads must be at least 1, got {threads}.")
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, "this process's CPUs" if n is None else "as asked")
    return threads


def machine_line() -> str:
    """One line for logs and reports: matmul peak and torch threads."""
    return (f"fp32 matmul peak {matmul_peak_gflops():.0f} GFLOP/s, "
            f"torch threads {torch.get_num_threads()}")
