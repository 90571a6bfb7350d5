"""Energy meters behind one interface: Intel RAPL (powercap sysfs), NVIDIA NVML (nvidia-ml-py) and Jetson rails
(jetson-stats or tegrastats). Parsing is separate from I/O so recorded outputs test it; the optional libraries
load only when a meter is asked for. `host_energy` measures a run with whatever this host has."""
from __future__ import annotations

from edgepool.meters.base import Measurement, Meter, MeterSession, measure, wrapped_delta
from edgepool.meters.detect import MeterSearch, detect_meter, find_meters
from edgepool.meters.host import NO_METER, HostEnergy, energy_metrics, host_energy
from edgepool.meters.integrate import PowerIntegrator, PowerSampler
from edgepool.meters.jetson import JetsonMeter, TegrastatsPower, module_total, parse_tegrastats
from edgepool.meters.nvml import NvmlMeter
from edgepool.meters.rapl import RaplMeter, RaplZone, rapl_zones

__all__ = [
    "Meter", "MeterSession", "Measurement", "measure", "wrapped_delta",
    "MeterSearch", "detect_meter", "find_meters",
    "NO_METER", "HostEnergy", "energy_metrics", "host_energy",
    "PowerIntegrator", "PowerSampler",
    "JetsonMeter", "TegrastatsPower", "module_total", "parse_tegrastats",
    "NvmlMeter", "RaplMeter", "RaplZone", "rapl_zones",
]
