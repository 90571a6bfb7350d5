"""NVIDIA GPUs through NVML (`pynvml`, from the `nvidia-ml-py` package, imported only when asked for).

Per GPU: `nvmlDeviceGetTotalEnergyConsumption` (millijoules since the driver loaded; Volta and newer) where every
GPU supports it, otherwise `nvmlDeviceGetPowerUsage` (milliwatts, board power) integrated over time. The
module object can be injected, so tests drive the same calls with recorded readings.
"""
from __future__ import annotations

import time

from edgepool.meters.base import Clock, Meter
from edgepool.meters.integrate import PowerSampler


def import_pynvml():
    """The real `pynvml`, or ImportError when nvidia-ml-py is not installed."""
    import pynvml  # optional dependency: nvidia-ml-py

    return pynvml


class NvmlMeter(Meter):
    """Joules per GPU ("gpu0", "gpu1", ...): the driver's energy counter, or integrated board power."""

    name = "nvml"
    covers = "this host's NVIDIA GPU boards (NVML), not the CPU or the rest of the host"

    def __init__(self, nvml=None, interval_s: float = 0.1, clock: Clock = time.monotonic, threaded: bool = True):
        self.nvml = nvml if nvml is not None else import_pynvml()
        self.nvml.nvmlInit()
        count = self.nvml.nvmlDeviceGetCount()
        if count < 1:
            raise RuntimeError("NVML found no GPU")
        self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.mode = "energy counter" if self._counters_work() else "power sampling"
        self.sampler = (None if self.mode == "energy counter" else
                        PowerSampler(self._power_w, interval_s, clock, threaded))

    def _counters_work(self) -> bool:
        try:
            for handle in self.handles:
                self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported (pre-Volta) or any driver refusal
            return False
        return True

    def _power_w(self) -> dict[str, float]:
        return {f"gpu{i}": self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0 for i, h in enumerate(self.handles)}

    def domains(self) -> list[str]:
        return [f"gpu{i}" for i in range(len(self.handles))]

    def read(self) -> dict[str, float]:
        if self.sampler is not None:
            return self.sampler.read()
        return {f"gpu{i}": self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
                for i, h in enumerate(self.handles)}

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - already shut down
            pass
