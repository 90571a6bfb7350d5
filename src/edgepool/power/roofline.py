"""Pagoda: time and energy rooflines per power mode, the model's layers placed on them, min-energy mode.

Per mode, the time roofline is the attainable FLOP/s = min(peak(mode), intensity x bandwidth(mode)), with the
GPU's peak scaled by its clock and bandwidth by the memory clock (`CostModel`'s accounting of each layer's
FLOPs and bytes). The energy roofline is joules per FLOP at an intensity: the mode's power split into static,
compute and memory parts (`PowerModel.parts`) over the attainable rate. A minibatch also needs the CPU
(kernel launches, data loading), slower at low CPU clocks and with fewer cores; its time overlaps the GPU's.
All figures here are *simulated* from published specs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepool.costmodel import PRECISION_BYTES, CostModel
from edgepool.device import Device
from edgepool.power.modes import Mode, ModeSpace
from edgepool.power.power_model import PowerModel
from edgepool.profile import ModelProfile

# CPU work per minibatch at the top CPU clock, for the CPU side of a step (assumptions, stated as such):
LAUNCH_S_PER_LAYER = 150e-6  # kernel launches + Python per block, forward and backward, one core
DATALOAD_S_PER_SAMPLE = 0.4e-3  # decode + augment of one sample on one core
DATALOADER_WORKERS = 4


@dataclass
class LayerWork:
    name: str
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        return self.flops / max(self.bytes, 1.0)


def layer_work(profile: ModelProfile, batch: int, phase: str = "train", precision: str = "fp32") -> list[LayerWork]:
    """FLOPs and bytes moved per layer for a minibatch, with `CostModel.layers_time`'s byte accounting."""
    if phase not in ("train", "infer"):
        raise ValueError(f"phase = {phase!r} is not valid; accepted: train, infer")
    scale, bscale = batch / profile.batch, PRECISION_BYTES[precision] / 4
    out = []
    for layer in profile.layers:
        act = (layer.input_bytes + layer.output_bytes) * scale * bscale
        weights = layer.param_bytes * bscale
        flops, moved = layer.fwd_flops * scale, weights + act
        if phase == "train":
            flops += layer.bwd_flops * scale
            moved += 2 * weights + act + layer.saved_bytes * scale * bscale
        out.append(LayerWork(layer.name, flops, moved))
    if phase == "train":  # optimizer step: read weights and gradients, write weights
        out.append(LayerWork("optimizer", 2.0 * profile.total_param_bytes * bscale / 4,
                             3.0 * profile.total_param_bytes * bscale))
    return out


@dataclass
class Rooflines:
    """Per-mode roofline parameters of one device over a mode space (arrays aligned with `modes`)."""

    space: ModeSpace
    device: Device
    modes: list[Mode]
    peak_flops: np.ndarray  # attainable compute, FLOP/s
    bandwidth: np.ndarray  # bytes/s
    static_w: np.ndarray
    compute_w: np.ndarray  # GPU dynamic watts at full compute use
    memory_w: np.ndarray
    cpu_w: np.ndarray
    cpu_speed: np.ndarray  # CPU clock relative to the top
    cores: np.ndarray

    @property
    def ridge(self) -> np.ndarray:
        """Intensity (FLOP/byte) where a mode turns from memory- to compute-bound."""
        return self.peak_flops / self.bandwidth

    def attainable(self, intensity: float) -> np.ndarray:
        intensity = max(intensity, 1e-9)
        return np.minimum(self.peak_flops, intensity * self.bandwidth)

    def joules_per_flop(self, intensity: float) -> np.ndarray:
        """Energy roofline: all power parts over the attainable rate at this intensity."""
        intensity = max(intensity, 1e-9)
        rate = self.attainable(intensity)
        compute_use = rate / self.peak_flops
        memory_use = rate / (intensity * self.bandwidth)
        return (self.static_w + self.compute_w * compute_use + self.memory_w * memory_use) / rate


def rooflines(space: ModeSpace, device: Device, power_model: PowerModel, precision: str = "fp32",
              modes: list[Mode] | None = None) -> Rooflines:
    modes = modes if modes is not None else space.modes()
    cost = CostModel(precision=precision)
    tops = dict(zip(space.dims, space.max_mode()))
    peak, bw, parts = [], [], []
    for mode in modes:
        d = space.describe(mode)
        peak.append(cost.effective_flops(device, precision, space.to_power_mode(mode, device)))
        bw.append(device.memory_bandwidth * d.get("mem_mhz", 1.0) / tops.get("mem_mhz", 1.0))
        parts.append(power_model.parts(space, mode))
    arr = np.asarray(modes, dtype=float)
    cpu_col = space.dim_names.index("cpu_mhz")
    return Rooflines(space, device, list(modes), np.array(peak), np.array(bw),
                     np.array([p["static"] for p in parts]), np.array([p["gpu"] for p in parts]),
                     np.array([p["mem"] for p in parts]), np.array([p["cpu"] for p in parts]),
                     arr[:, cpu_col] / tops["cpu_mhz"], arr[:, space.dim_names.index("cores")])


@dataclass
class Sweep:
    """Simulated time, power and energy of one minibatch in every mode."""

    modes: list[Mode]
    time_s: np.ndarray
    power_w: np.ndarray
    energy_j: np.ndarray
    gpu_s: np.ndarray
    cpu_s: np.ndarray


def sweep(work: list[LayerWork], roof: Rooflines, batch: int) -> Sweep:
    """Time and energy of the minibatch `work` in every mode of `roof` (vectorised over modes)."""
    flops = np.array([w.flops for w in work])
    moved = np.array([w.bytes for w in work])
    t_compute = flops[None, :] / roof.peak_flops[:, None]
    t_memory = moved[None, :] / roof.bandwidth[:, None]
    t_layers = np.maximum(t_compute, t_memory)
    gpu = t_layers.sum(axis=1)
    launch = len(work) * LAUNCH_S_PER_LAYER / roof.cpu_speed
    data = batch * DATALOAD_S_PER_SAMPLE / roof.cpu_speed / np.minimum(roof.cores, DATALOADER_WORKERS)
    cpu = launch + data
    time = np.maximum(gpu, cpu)
    u_gpu = t_compute.sum(axis=1) / time
    u_mem = t_memory.sum(axis=1) / time
    busy_cores = np.minimum(roof.cores, 1 + DATALOADER_WORKERS)
    u_cpu = (launch + data * np.minimum(roof.cores, DATALOADER_WORKERS)) / (time * busy_cores)
    cores_share = busy_cores / roof.cores
    power = (roof.static_w + roof.compute_w * u_gpu + roof.memory_w * u_mem
             + roof.cpu_w * np.clip(u_cpu, 0, 1) * cores_share)
    return Sweep(roof.modes, time, power, power * time, gpu, cpu)


def placement(work: list[LayerWork], roof: Rooflines, index: int) -> list[dict]:
    """Each layer on mode `index`'s rooflines: intensity, bound, attainable FLOP/s, time and joules."""
    out = []
    for w in work:
        rate = float(roof.attainable(w.intensity)[index])
        bound = "compute" if w.intensity >= roof.ridge[index] else "memory"
        time = w.flops / rate if w.flops else w.bytes / roof.bandwidth[index]
        out.append({"layer": w.name, "intensity_flop_per_byte": w.intensity, "bound": bound,
                    "attainable_flops": rate, "time_s": time,
                    "energy_j": float(roof.joules_per_flop(w.intensity)[index]) * w.flops})
    return out


def min_energy_mode(s: Sweep, latency_bound_s: float) -> int | None:
    """Index of the mode with the least energy per minibatch among those meeting the latency bound."""
    ok = np.flatnonzero(s.time_s <= latency_bound_s)
    return int(ok[np.argmin(s.energy_j[ok])]) if len(ok) else None
