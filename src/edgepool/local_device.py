"""Measure this machine as a `Device` (the `local` entry of a cluster spec)."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from functools import lru_cache

import psutil
import torch

from edgepool.device import Device


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch threads (then restore): timings comparable with one-thread workers, and
    small models that run faster on one thread than on several fighting over a shared machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_time(fn, repeats: int = 5) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call."""
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
    return 2 * size**3 / best_time(lambda: torch.mm(a, b))


def measure_memory_bandwidth(nbytes: int = 128 * 2**20) -> float:
    """Bytes/s of a large tensor copy (read + write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * nbytes / best_time(lambda: dst.copy_(src))


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


def detect_accelerator() -> dict | None:
    """The accelerator this host has, as torch or the vendor's tools report it (None: CPU only).

    CUDA (desktop GPUs, Jetson boards) and Apple MPS through torch; on a Jetson the board's model from the device
    tree or jetson-stats (`jtop`); NVML (`pynvml`) for the driver's view where it is installed. Reported, not
    measured: the planners use the CPU figures `measure_local_device` measured unless the device's spec says
    otherwise."""
    found: dict | None = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found = {"kind": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                 "count": torch.cuda.device_count(), "source": "torch.cuda"}
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found = {"kind": "mps", "name": "Apple GPU (Metal)", "memory_bytes": None, "count": 1,
                 "source": "torch.backends.mps"}
    model = _read_text("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or "nvidia" in model.lower()):
        found = {**(found or {"kind": "cuda", "count": 1, "memory_bytes": None, "source": "device tree"}),
                 "board": model.strip("\x00 \n")}
    try:
        from jtop import jtop  # optional: jetson-stats, where its service runs on a Jetson

        with jtop() as jetson:
            board = jetson.board.get("hardware", {})
        found = {**(found or {"kind": "cuda", "count": 1, "memory_bytes": None}),
                 "board": board.get("Model") or (found or {}).get("board"), "source": "jetson-stats"}
    except Exception:  # noqa: BLE001 - absent library or service
        pass
    try:
        import pynvml  # optional: NVIDIA's management library

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        found = {**(found or {"kind": "cuda", "count": pynvml.nvmlDeviceGetCount()}),
                 "name": _text(pynvml.nvmlDeviceGetName(handle)),
                 "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total), "source": "nvml"}
    except Exception:  # noqa: BLE001 - absent library or driver: nothing more to report
        pass
    return found


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
