"""The power work's modes, handed to the planners: each Jetson's modes worth planning with, and their draw.

A catalog Jetson carries its nvpmodel presets, each with a power *budget*. The planners' energy search
(`edgepool.planners.energy`) walks whatever modes a device carries, so this module gives it better ones:

- the modes on the device's (time, energy) Pareto front for a minibatch of the model being planned, from
  Pagoda's sweep over the device's mode space (`roofline.sweep`: GPU, memory and the CPU side of a step; the
  full PowerTrain grid of 4,368 modes on the AGX Orin, the presets' combinations elsewhere), thinned to the
  most frugal one within each of `SLOWDOWNS`;
- the presets themselves;

each with its modelled draw while training this model, which the cost model then uses for busy time instead
of the budget: the catalog's idle power plus the mode's dynamic part at the CPU, GPU and memory utilisation
of this minibatch (the sweep's power less its static part). The static part stays the catalog's idle figure
in every mode: the fitted model's static term falls with the cores online, but no published figure says by
how much, so no saving is claimed from it. A mode off the front is never worth it: another is faster and uses
less energy for the same work. Everything here is simulated from published specs.
"""
from __future__ import annotations

from dataclasses import replace

from edgepool.catalog import list_devices
from edgepool.cluster import Cluster
from edgepool.device import Device, PowerMode
from edgepool.power.modes import jetson_mode_space
from edgepool.power.power_model import power_model_for
from edgepool.power.powertrain import pareto_front
from edgepool.power.roofline import layer_work, rooflines, sweep
from edgepool.profile import ModelProfile

# The front is thinned to its most frugal mode within each of these slowdowns of the fastest: the modes a
# throughput floor (90 % of the best, say) can use are then all there, and a few far slower ones.
SLOWDOWNS = (1.0, 1.03, 1.06, 1.1, 1.15, 1.25, 1.5, 2.0, 3.0)
FRONT_MODES = len(SLOWDOWNS)


def planning_modes(device: Device, profile: ModelProfile, batch: int, precision: str = "fp32",
                   front_modes: int = FRONT_MODES) -> list[PowerMode]:
    """The presets and the thinned (time, energy) front of this model's minibatch, fastest first, each with
    its modelled draw while busy. The catalog device's name picks its mode space."""
    space = jetson_mode_space(device.name)
    roof = rooflines(space, device, power_model_for(space), precision)
    s = sweep(layer_work(profile, batch, "train", precision), roof, batch)
    index = {mode: i for i, mode in enumerate(s.modes)}
    front = pareto_front(s.time_s, s.energy_j)  # fastest first, energy falling
    fastest = s.time_s[front[0]]
    keep = set()
    for slowdown in SLOWDOWNS[:front_modes]:  # the most frugal front mode within each slowdown
        within = [i for i in front if s.time_s[i] <= fastest * slowdown]
        keep.add(s.modes[within[-1]])

    def drawn(mode: PowerMode, grid_mode: tuple) -> PowerMode:
        i = index[grid_mode]
        dynamic = float(s.power_w[i] - roof.static_w[i])
        return mode.model_copy(update={"busy_w": round(device.power_idle_w + dynamic, 3)})

    out = [drawn(device.mode(name), mode) for name, mode in space.presets.items()]
    out += [drawn(space.to_power_mode(mode, device), mode)
            for mode in sorted(keep, key=index.get) if mode not in space.presets.values()]
    return sorted(out, key=lambda m: -m.compute_scale)


def with_planning_modes(cluster: Cluster, profile: ModelProfile, batch: int, precision: str = "fp32",
                        front_modes: int = FRONT_MODES) -> Cluster:
    """The cluster with every catalog Jetson carrying its planning modes, set to its fastest one (the plan a
    throughput search would make, now with the same modelled draw as the others). Other devices unchanged."""
    devices, modes, cache = dict(cluster.devices), dict(cluster.power_modes), {}
    for name, device in cluster.devices.items():
        entry = catalog_jetson(device)
        if entry is None:
            continue
        if entry.name not in cache:
            cache[entry.name] = planning_modes(entry, profile, batch, precision, front_modes)
        devices[name] = device.model_copy(update={"power_modes": cache[entry.name]})
        modes[name] = cache[entry.name][0].name
    return replace(cluster, devices=devices, power_modes=modes)


def catalog_jetson(device: Device) -> Device | None:
    """The catalog Jetson a cluster device was made from (same presets and peaks; cluster devices carry
    their own names), or None: other devices (a laptop's power profiles, a device of your own) have no
    published mode space and keep their own modes."""
    if not device.power_modes:
        return None
    for entry in list_devices():
        if (entry.name.startswith("jetson-") and entry.power_modes == device.power_modes
                and entry.peak_flops == device.peak_flops):
            return entry
    return None
