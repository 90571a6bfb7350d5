"""Measure this machine as a `Device` (the `local` entry of a cluster spec)."""
from __future__ import annotations

import os
import platform
import time
from functools import lru_cache

import psutil
import torch

from edgepool.device import Device


def _best_time(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_matmul_flops(size: int = 1024, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a square matmul with the current torch thread count: the attainable compute peak."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / _best_time(lambda: torch.mm(a, b))


def measure_memory_bandwidth(nbytes: int = 128 * 2**20) -> float:
    """Bytes/s of a large tensor copy (read + write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_time(lambda: dst.copy_(src))


@lru_cache(maxsize=1)
def measure_local_device(name: str = "local") -> Device:
    """A measured profile of this host. Peak = measured matmul rate, so efficiency is relative to it."""
    fp32 = measure_matmul_flops()
    return Device(
        name=name,
        kind="cpu",
        description=f"this machine, measured: {platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} torch threads",
        peak_flops={"fp32": fp32},
        memory_bytes=psutil.virtual_memory().total,
        memory_bandwidth=measure_memory_bandwidth(),
        cpu_cores=os.cpu_count() or 1,
        power_idle_w=5.0,
        power_max_w=15.0 * (os.cpu_count() or 1),
        efficiency=0.6,
        measured=True,
        sources={
            "peak_flops": "measured: best of 5 fp32 1024x1024 torch.mm on this machine",
            "memory": "measured: psutil total memory; bandwidth from a 128 MiB tensor copy",
            "power": "modelled: no energy counters on this machine (assumed 5 W idle, 15 W per core)",
        },
    )
