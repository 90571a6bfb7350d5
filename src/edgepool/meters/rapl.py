"""Intel RAPL through the Linux powercap sysfs tree (`/sys/class/powercap/intel-rapl:*`; AMD Zen packages appear
under the same names).

Each zone folder holds `name` (package-0, core, uncore, dram, psys), `energy_uj` (a counter in microjoules) and
`max_energy_range_uj` (where it wraps to 0). `intel-rapl:P` is a package (or psys), `intel-rapl:P:S` a subzone.
The core and uncore subzones are inside their package's figure; DRAM is not (powercap/powercap issue #3), and
psys (the platform, where present) overlaps everything, so the total is packages + DRAM, with psys reported
beside it. Since 2020 `energy_uj` is readable by root only on most distributions (the Platypus attack); an
unreadable counter means no meter, with that reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgepool.meters.base import Meter

POWERCAP_ROOT = Path("/sys/class/powercap")
ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone: its folder, domain name ("package-0", "package-0/core") and wrap range in joules."""

    path: Path
    domain: str
    parent: str | None  # the package domain of a subzone
    kind: str  # the zone's own `name`: package-0, core, uncore, dram, psys
    max_energy_j: float

    def energy_j(self) -> float:
        return int((self.path / "energy_uj").read_text()) / 1e6


def rapl_zones(root: str | Path = POWERCAP_ROOT) -> list[RaplZone]:
    """The RAPL zones under `root` (a powercap tree, flat as /sys/class/powercap is), packages before their
    subzones. Raises OSError when a zone's files cannot be read (no permission)."""
    root = Path(root)
    found = []
    for path in root.glob("intel-rapl:*"):
        match = ZONE.match(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), -1 if match[2] is None else int(match[2]), path))
    names = {(p, s): (path / "name").read_text().strip() for p, s, path in found}
    zones = []
    for package, sub, path in sorted(found):
        kind = names[(package, sub)]
        parent = None if sub < 0 else names.get((package, -1), f"zone-{package}")
        domain = kind if parent is None else f"{parent}/{kind}"
        zones.append(RaplZone(path, domain, parent, kind,
                              int((path / "max_energy_range_uj").read_text()) / 1e6))
    return zones


class RaplMeter(Meter):
    """Cumulative joules per RAPL zone."""

    name = "rapl"
    covers = "this host's CPU packages and DRAM (RAPL)"

    def __init__(self, root: str | Path = POWERCAP_ROOT):
        self.zones = rapl_zones(root)
        if not self.zones:
            raise FileNotFoundError(f"no intel-rapl:* zones under {root}")
        self.read()  # a counter only root may read fails here, not in the middle of a run

    def domains(self) -> list[str]:
        return [z.domain for z in self.zones]

    def read(self) -> dict[str, float]:
        return {z.domain: z.energy_j() for z in self.zones}

    def wrap_j(self) -> dict[str, float]:
        return {z.domain: z.max_energy_j for z in self.zones}

    def total(self, joules: dict[str, float]) -> float:
        """Packages plus DRAM subzones (core/uncore are inside their package; psys overlaps all of them)."""
        return sum(joules.get(z.domain, 0.0) for z in self.zones
                   if (z.parent is None and z.kind != "psys") or z.kind == "dram")
