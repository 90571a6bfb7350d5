"""Which meters this host has: RAPL (powercap sysfs), NVML (nvidia-ml-py), Jetson rails (jtop or tegrastats).

Each probe that fails says why, so a report can tell "no meter" from "a meter we could not read".
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgepool.meters.base import Meter
from edgepool.meters.jetson import JetsonMeter
from edgepool.meters.nvml import NvmlMeter, import_pynvml
from edgepool.meters.rapl import POWERCAP_ROOT, RaplMeter

LOOKED_FOR = "RAPL, NVML, Jetson rails"


def open_jetson() -> JetsonMeter:
    """jetson-stats where it imports, else tegrastats where it is on PATH."""
    try:
        return JetsonMeter.from_jtop()
    except ImportError:
        jtop_failure = "jetson-stats (jtop) not installed"
    except Exception as error:  # noqa: BLE001 - installed but its service is not running, or no rails
        jtop_failure = f"jetson-stats failed ({error})"
    if shutil.which("tegrastats") is None:
        raise FileNotFoundError(f"{jtop_failure} and no tegrastats on PATH")
    return JetsonMeter.from_tegrastats()


@dataclass
class MeterSearch:
    """The meters found, in probe order, and why each other source is absent."""

    meters: list[Meter] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def first(self) -> Meter | None:
        return self.meters[0] if self.meters else None


def find_meters(rapl_root: str | Path = POWERCAP_ROOT, import_nvml: Callable = import_pynvml,
                jetson: Callable[[], Meter] = open_jetson) -> MeterSearch:
    """Probe every source (arguments replace the real ones in tests)."""
    search = MeterSearch()
    probes: list[tuple[str, Callable[[], Meter]]] = [
        ("rapl", lambda: RaplMeter(rapl_root)),
        ("nvml", lambda: NvmlMeter(import_nvml())),
        ("jetson", jetson),
    ]
    for name, probe in probes:
        try:
            search.meters.append(probe())
        except ImportError as error:
            search.reasons[name] = f"{error.name or 'module'} not installed"
        except Exception as error:  # noqa: BLE001 - absent files, no permission, no driver, no device
            search.reasons[name] = f"{type(error).__name__}: {error}"
    return search


def detect_meter(rapl_root: str | Path = POWERCAP_ROOT, import_nvml: Callable = import_pynvml,
                 jetson: Callable[[], Meter] = open_jetson) -> Meter | None:
    """The first meter this host has (RAPL, then NVML, then Jetson rails), or None; the others are closed."""
    search = find_meters(rapl_root, import_nvml, jetson)
    for extra in search.meters[1:]:
        extra.close()
    return search.first()
