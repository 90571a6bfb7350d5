"""Power per mode: a static term plus dynamic CPU, GPU and memory terms, each fitted to published figures.

    P(mode, u) = P0 + k_core * cores
               + k_cpu * cores_busy * (f_cpu / f_cpu_max)^a * u_cpu
               + k_gpu * (f_gpu / f_gpu_max)^a * u_gpu
               + k_mem * (f_mem / f_mem_max) * u_mem

`a` = 2.5 stands for f * V(f)^2 with voltage rising along the DVFS table. For Jetsons the coefficients are a
non-negative least-squares fit to the catalog's idle power and its nvpmodel budgets read as full-load draw
(an upper bound: a budget caps, it is not a measurement). Everything this model returns is *modelled*.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import nnls

from edgepool.device import Device
from edgepool.power.modes import Mode, ModeSpace

DVFS_EXPONENT = 2.5
TERMS = ("static_w", "core_w", "cpu_w", "gpu_w", "mem_w")
IDLE_WEIGHT = 3.0  # the idle figure is a measurement; a budget is only a cap
PRIOR_WEIGHT = 0.5  # rail figures and default shares count half as much as the idle and budget points

# Per-rail full-load watts at the max mode, where someone published them: (watts, source).
RAIL_FIGURES = {
    "jetson-agx-orin": {
        "gpu_w": (40.4, "VDD_GPU_SOC under a GPU stress test at MAXN, NVIDIA developer forum thread 323456"),
        "cpu_w": (15.2, "VDD_CPU_CV under a CPU stress test at MAXN, NVIDIA developer forum thread 323456"),
    },
}
# Otherwise the dynamic range (budget - idle at the max mode) is split by these default shares.
DEFAULT_SHARES = {"gpu_w": 0.5, "cpu_w": 0.3, "mem_w": 0.2}


@dataclass(frozen=True)
class PowerModel:
    """Coefficients of the static + dynamic power model of one mode space (watts)."""

    space: str
    static_w: float
    core_w: float = 0.0
    cpu_w: float = 0.0
    gpu_w: float = 0.0
    mem_w: float = 0.0
    exponent: float = DVFS_EXPONENT
    source: str = "modelled"
    fit: dict = field(default_factory=dict)  # data points and residuals of the fit

    def terms(self, space: ModeSpace, mode: Mode) -> dict[str, float]:
        """Each coefficient's multiplier at full utilisation (the design row of the fit)."""
        d = space.describe(mode)
        top = space.max_mode()
        tops = dict(zip(space.dims, top))
        cores = d.get("cores", 1.0)
        busy = min(cores, d["threads"]) if "threads" in d else cores
        if "cpu_fraction" in d:
            cpu_rel = d["cpu_fraction"]
        else:
            cpu_rel = d.get("cpu_mhz", 1.0) / tops.get("cpu_mhz", 1.0)
        out = {"static_w": 1.0, "core_w": cores, "cpu_w": busy * cpu_rel ** self.exponent}
        out["gpu_w"] = (d["gpu_mhz"] / tops["gpu_mhz"]) ** self.exponent if "gpu_mhz" in d else 0.0
        out["mem_w"] = d["mem_mhz"] / tops["mem_mhz"] if "mem_mhz" in d else 0.0
        return out

    def power(self, space: ModeSpace, mode: Mode, u_cpu: float = 1.0, u_gpu: float = 1.0,
              u_mem: float = 1.0) -> float:
        """Watts drawn in `mode` with the given busy fractions of CPU, GPU and memory (each 0-1)."""
        t = self.terms(space, mode)
        return (self.static_w + self.core_w * t["core_w"] + self.cpu_w * t["cpu_w"] * u_cpu
                + self.gpu_w * t["gpu_w"] * u_gpu + self.mem_w * t["mem_w"] * u_mem)

    def parts(self, space: ModeSpace, mode: Mode) -> dict[str, float]:
        """Static and full-load dynamic watts of each component (Pagoda's energy roofline uses them)."""
        t = self.terms(space, mode)
        return {"static": self.static_w + self.core_w * t["core_w"], "cpu": self.cpu_w * t["cpu_w"],
                "gpu": self.gpu_w * t["gpu_w"], "mem": self.mem_w * t["mem_w"]}

    def to_dict(self) -> dict:
        return asdict(self)


def fit_jetson_power_model(device: Device, space: ModeSpace) -> PowerModel:
    """Fit the coefficients to the device's idle power (max mode, nothing busy) and nvpmodel budgets."""
    proto = PowerModel(space=space.name, static_w=0.0)
    rows, targets, labels = [], [], []
    idle_terms = proto.terms(space, space.max_mode())
    rows.append([IDLE_WEIGHT * idle_terms["static_w"], IDLE_WEIGHT * idle_terms["core_w"], 0.0, 0.0, 0.0])
    targets.append(IDLE_WEIGHT * device.power_idle_w)
    labels.append("idle (max mode, unloaded)")
    for name, mode in space.presets.items():
        t = proto.terms(space, mode)
        rows.append([t[k] for k in TERMS])
        targets.append(device.mode(name).power_budget_w)
        labels.append(f"nvpmodel {name} budget at full load")
    top = proto.terms(space, space.max_mode())
    dynamic = max(device.power_max_w - device.power_idle_w, 0.0)
    rails = RAIL_FIGURES.get(device.name, {})
    priors = 0
    for term, share in DEFAULT_SHARES.items():
        watts, why = rails.get(term, (share * dynamic, f"default share {share:.0%} of the dynamic range"))
        if top[term] > 0:
            row = [0.0] * len(TERMS)
            row[TERMS.index(term)] = top[term] * PRIOR_WEIGHT
            rows.append(row)
            targets.append(watts * PRIOR_WEIGHT)
            labels.append(f"{term[:-2]} dynamic at max mode: {why} (weight {PRIOR_WEIGHT})")
            priors += 1
    a, b = np.asarray(rows), np.asarray(targets, dtype=float)
    coef, _ = nnls(a, b)
    a, b = a[: len(a) - priors], b[: len(b) - priors]
    a[0], b[0] = a[0] / IDLE_WEIGHT, b[0] / IDLE_WEIGHT
    predicted = a @ coef
    fit = {"points": [{"what": w, "published_w": float(y), "model_w": round(float(p), 3)}
                      for w, y, p in zip(labels, b, predicted)],
           "source": device.sources.get("power", "") + "; " + device.sources.get("power_modes", "")}
    return PowerModel(space=space.name, **dict(zip(TERMS, (float(c) for c in coef))),
                      source="modelled: fitted to published idle power and nvpmodel budgets", fit=fit)


def local_power_model(space: ModeSpace) -> PowerModel:
    """This host has no energy counters: watts modelled as if cpu_fraction were a DVFS frequency.

    5 W idle and up to 15 W per busy core, the figures `edgepool.local_device` assumes for this machine.
    """
    return PowerModel(space=space.name, static_w=5.0, core_w=1.0, cpu_w=14.0,
                      source="modelled: 5 W idle + 1 W per allowed core + 14 W x busy cores x cpu_fraction^2.5 "
                             "(no energy counters on this host; cpu_fraction treated as DVFS frequency)")


def power_model_for(space: ModeSpace) -> PowerModel:
    """The power model of a mode space: the local emulated one, or a catalog Jetson's fitted one."""
    if space.emulated:
        return local_power_model(space)
    from edgepool.catalog import get_device

    return fit_jetson_power_model(get_device(space.name), space)
