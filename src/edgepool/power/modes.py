"""Power-mode spaces: the knobs a device exposes (cores, CPU/GPU/memory frequencies) as a grid of modes.

A `ModeSpace` is a named grid: ordered dimensions, each a sorted tuple of values, plus the vendor presets
(nvpmodel) that sit in or near it. A mode is one value per dimension. Searches (Fulcrum) walk the grid by
index; predictors (PowerTrain) see each mode as features normalised by the dimension's maximum.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from edgepool.device import Device, PowerMode
from edgepool.errors import SpecError

Mode = tuple  # one value per dimension, in the space's dimension order


@dataclass(frozen=True)
class ModeSpace:
    """A grid of power modes. `dims` maps a dimension name to its sorted values."""

    name: str
    dims: dict[str, tuple[float, ...]]
    presets: dict[str, Mode] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    emulated: bool = False  # True: a mode is applied by emulation on this host, not by the vendor's tools

    def __post_init__(self):
        for dim, values in self.dims.items():
            if not values or list(values) != sorted(values):
                raise SpecError(field=f"mode space {self.name}: {dim}", value=values,
                                accepted="a non-empty ascending list of values")

    @property
    def dim_names(self) -> list[str]:
        return list(self.dims)

    @property
    def size(self) -> int:
        return int(np.prod([len(v) for v in self.dims.values()]))

    def modes(self) -> list[Mode]:
        """Every mode of the grid, in a fixed order (the last dimension varies fastest)."""
        return list(itertools.product(*self.dims.values()))

    def max_mode(self) -> Mode:
        return tuple(values[-1] for values in self.dims.values())

    def index(self, mode: Mode) -> tuple[int, ...]:
        """Per-dimension indices of a mode; a value not on the grid is an error naming it."""
        out = []
        for (dim, values), value in zip(self.dims.items(), mode):
            matches = [i for i, v in enumerate(values) if abs(v - value) <= 1e-9 * max(1.0, abs(v))]
            if not matches:
                raise SpecError(field=dim, value=value, accepted=", ".join(f"{v:g}" for v in values))
            out.append(matches[0])
        return tuple(out)

    def at(self, index: tuple[int, ...]) -> Mode:
        return tuple(values[i] for values, i in zip(self.dims.values(), index))

    def neighbors(self, mode: Mode, step: int = 1) -> list[tuple[str, int, Mode]]:
        """Modes `step` grid positions away along one dimension: (dimension, direction, mode)."""
        idx = self.index(mode)
        out = []
        for d, (dim, values) in enumerate(self.dims.items()):
            for direction in (-1, 1):
                j = idx[d] + direction * step
                if 0 <= j < len(values):
                    moved = list(idx)
                    moved[d] = j
                    out.append((dim, direction, self.at(tuple(moved))))
        return out

    def features(self, modes: list[Mode]) -> np.ndarray:
        """Mode values divided by each dimension's maximum: the predictors' inputs, in [0, 1]."""
        top = np.array([values[-1] for values in self.dims.values()], dtype=float)
        return np.asarray(modes, dtype=float).reshape(-1, len(self.dims)) / top

    def describe(self, mode: Mode) -> dict[str, float]:
        return dict(zip(self.dims, mode))

    def parse(self, text: str) -> Mode:
        """A mode from 'name=value,...' (every dimension) or a preset name."""
        if text in self.presets:
            return self.presets[text]
        try:
            pairs = dict(part.split("=", 1) for part in text.split(","))
            mode = tuple(float(pairs[dim]) for dim in self.dims)
        except (KeyError, ValueError):
            accepted = (f"a preset ({', '.join(self.presets) or 'none'}) or "
                        + ",".join(f"{d}=VALUE" for d in self.dims))
            raise SpecError(field="mode", value=text, accepted=accepted) from None
        self.index(mode)
        return mode

    def to_power_mode(self, mode: Mode, device: Device, budget_w: float | None = None) -> PowerMode:
        """The foundation's `PowerMode` for a grid mode of a Jetson space (for `CostModel`)."""
        d = self.describe(mode)
        gpu_top = self.dims["gpu_mhz"][-1] if "gpu_mhz" in self.dims else None
        return PowerMode(
            name=format_mode(self, mode),
            power_budget_w=budget_w or device.power_max_w,
            cpu_cores_online=int(d["cores"]) if "cores" in d else None,
            cpu_max_freq_mhz=d.get("cpu_mhz"),
            gpu_max_freq_mhz=d.get("gpu_mhz"),
            memory_max_freq_mhz=d.get("mem_mhz"),
            compute_scale=min(1.0, d["gpu_mhz"] / gpu_top) if gpu_top else 1.0,
        )


def format_mode(space: ModeSpace, mode: Mode) -> str:
    return ",".join(f"{dim}={value:g}" for dim, value in zip(space.dims, mode))


# --------------------------------------------------------------------------------------------- Jetson AGX Orin
# The grid PowerTrain (arXiv 2407.13944) profiled on the AGX Orin: 6 core counts x 14 CPU x 13 GPU x 4 memory
# frequencies = 4,368 modes. Values are the Orin's DVFS steps as its sysfs `available_frequencies` lists them
# (CPU every other step from 268.8 MHz, all 13 GPU steps, all 4 EMC steps).
ORIN_AGX_CORES = (2, 4, 6, 8, 10, 12)
ORIN_AGX_CPU_MHZ = (268.8, 422.4, 576.0, 729.6, 883.2, 1036.8, 1190.4, 1344.0, 1497.6, 1651.2, 1804.8, 1958.4,
                    2112.0, 2201.6)
ORIN_AGX_GPU_MHZ = (114.75, 216.75, 318.75, 420.75, 522.75, 624.75, 726.75, 828.75, 930.75, 1032.75, 1134.75,
                    1236.75, 1300.5)
ORIN_AGX_MEM_MHZ = (204.0, 665.6, 2133.0, 3199.0)

_ORIN_SOURCES = {
    "grid": "PowerTrain, Prashanthi S.K. et al., arXiv 2407.13944: 4,368 AGX Orin modes = cores 2-12 step 2, "
            "14 CPU, 13 GPU, 4 memory frequencies",
    "frequencies": "Jetson AGX Orin sysfs available_frequencies (cpufreq policy, GPU devfreq, EMC), as listed in "
                   "NVIDIA Jetson Linux Developer Guide, Platform Power and Performance (Orin series); the CPU "
                   "subset (every other step from 268.8 MHz) is our reconstruction of PowerTrain's 14 values",
    "presets": "nvpmodel presets from the device catalog (catalog/devices.yaml), snapped to the nearest grid step",
}


def _snap(values: tuple[float, ...], x: float | None) -> float:
    if x is None:
        return values[-1]
    return min(values, key=lambda v: abs(v - x))


def _presets_on_grid(device: Device, dims: dict[str, tuple[float, ...]]) -> dict[str, Mode]:
    presets = {}
    for pm in device.power_modes:
        presets[pm.name] = (
            _snap(dims["cores"], pm.cpu_cores_online),
            _snap(dims["cpu_mhz"], pm.cpu_max_freq_mhz),
            _snap(dims["gpu_mhz"], pm.gpu_max_freq_mhz),
            _snap(dims["mem_mhz"], pm.memory_max_freq_mhz),
        )
    return presets


def _preset_space(device: Device) -> ModeSpace:
    """A Jetson whose full frequency grid we have no source for: its nvpmodel presets' values as the grid."""
    pms = device.power_modes
    dims = {
        "cores": tuple(sorted({float(p.cpu_cores_online or device.cpu_cores) for p in pms})),
        "cpu_mhz": tuple(sorted({float(p.cpu_max_freq_mhz) for p in pms if p.cpu_max_freq_mhz})),
        "gpu_mhz": tuple(sorted({float(p.gpu_max_freq_mhz) for p in pms if p.gpu_max_freq_mhz})),
        "mem_mhz": tuple(sorted({float(p.memory_max_freq_mhz) for p in pms if p.memory_max_freq_mhz})),
    }
    return ModeSpace(
        name=device.name, dims=dims, presets=_presets_on_grid(device, dims),
        sources={"grid": "the values the catalog's nvpmodel presets set (no published full grid in edgepool; "
                         "combinations between presets are allowed by the hardware but not individually sourced)",
                 "presets": device.sources.get("power_modes", "device catalog")})


@lru_cache(maxsize=None)
def jetson_mode_space(device_name: str) -> ModeSpace:
    """The mode space of a catalog Jetson: the full PowerTrain grid for the AGX Orin, presets elsewhere."""
    from edgepool.catalog import get_device

    device = get_device(device_name)
    if not device.power_modes:
        raise SpecError(field="device", value=device_name,
                        accepted=", ".join(n for n in _devices_with_modes()),
                        hint="only devices with nvpmodel presets in the catalog have a mode space")
    if device_name == "jetson-agx-orin":
        dims = {"cores": tuple(float(c) for c in ORIN_AGX_CORES), "cpu_mhz": ORIN_AGX_CPU_MHZ,
                "gpu_mhz": ORIN_AGX_GPU_MHZ, "mem_mhz": ORIN_AGX_MEM_MHZ}
        return ModeSpace(name=device_name, dims=dims, presets=_presets_on_grid(device, dims),
                         sources=dict(_ORIN_SOURCES))
    return _preset_space(device)


def _devices_with_modes() -> list[str]:
    from edgepool.catalog import list_devices

    return [d.name for d in list_devices() if d.power_modes]


# --------------------------------------------------------------------------------------------- this host
# A mode emulated here: CPU cores the workload may run on (affinity), torch threads, and a CPU speed fraction
# applied as a cgroup v1 CFS quota per allowed core (a duty cycle, standing in for DVFS frequency).
def local_mode_space(fraction_step: float = 0.025, min_fraction: float = 0.2, threads: tuple[int, ...] = (1, 2),
                     cores: tuple[int, ...] | None = None) -> ModeSpace:
    """The emulated mode grid of this host: cores x threads x CPU fraction."""
    ncpu = os.cpu_count() or 1
    cores = cores or tuple(range(1, min(ncpu, 2) + 1))
    n = int(round((1.0 - min_fraction) / fraction_step))
    fractions = tuple(round(min_fraction + i * fraction_step, 6) for i in range(n + 1))
    return ModeSpace(
        name=f"local-{ncpu}cpu", emulated=True,
        dims={"cores": tuple(float(c) for c in cores), "threads": tuple(float(t) for t in threads),
              "cpu_fraction": fractions},
        presets={"max": (float(cores[-1]), float(threads[-1]), 1.0)},
        sources={"grid": "emulated on this host: cores = CPU affinity, threads = torch.set_num_threads, "
                         "cpu_fraction = cgroup v1 cpu.cfs_quota_us / (cpu.cfs_period_us x cores)"})


def quick_local_mode_space() -> ModeSpace:
    return local_mode_space(fraction_step=0.1)
