"""One point of the characterization grid: every knob of the input pipeline the sweep turns."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from edgepool.errors import SpecError

STORAGES = ("disk", "tmpfs")
CACHES = ("warm", "dropped")
POWER_MODES = {"full": 1.0, "half": 0.5}  # emulated: the share of the host's cores a CPU quota allows
RUNTIMES = ("bare-metal", "namespaces", "container")
NAMESPACES_LABEL = "namespaces only (unshare), not a container image"


@dataclass(frozen=True)
class Setting:
    """A DataLoader and host configuration. The defaults are PyTorch's own (workers 0, no pinned memory) on
    local disk with a warm page cache, batch 32, the whole CPU, no isolation: the run a user gets untouched."""

    workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None  # only with workers > 0 (PyTorch's default there is 2)
    batch_size: int = 32
    storage: str = "disk"
    cache: str = "warm"
    power_mode: str = "full"
    runtime: str = "bare-metal"

    def __post_init__(self) -> None:
        cores = os.cpu_count() or 1
        if not 0 <= self.workers <= 4 * cores:
            raise SpecError(field="workers", value=self.workers, accepted=f"an integer in [0, {4 * cores}]")
        if self.prefetch_factor is not None and (self.workers == 0 or self.prefetch_factor < 1):
            raise SpecError(field="prefetch_factor", value=self.prefetch_factor,
                            accepted="an integer >= 1, and only with workers > 0")
        if self.batch_size < 1:
            raise SpecError(field="batch_size", value=self.batch_size, accepted="an integer >= 1")
        for field, value, accepted in (("storage", self.storage, STORAGES), ("cache", self.cache, CACHES),
                                       ("power_mode", self.power_mode, tuple(POWER_MODES)),
                                       ("runtime", self.runtime, RUNTIMES)):
            if value not in accepted:
                raise SpecError(field=field, value=value, accepted=", ".join(accepted))

    def with_(self, **changes) -> "Setting":
        return replace(self, **changes)

    def changes(self, base: "Setting | None" = None) -> dict:
        """The knobs that differ from `base` (the default setting unless given)."""
        base = base or Setting()
        mine, theirs = asdict(self), asdict(base)
        return {k: v for k, v in mine.items() if v != theirs[k]}

    @property
    def label(self) -> str:
        """Short name for tables and plots: the changes from the default, or 'default'."""
        short = {"workers": "w", "pin_memory": "pin", "prefetch_factor": "pf", "batch_size": "b",
                 "storage": "", "cache": "cache ", "power_mode": "power ", "runtime": ""}
        parts = []
        for key, value in self.changes().items():
            if isinstance(value, bool):
                parts.append(short[key] if value else f"no {short[key]}")
            elif key == "runtime" and value == "namespaces":
                parts.append("unshare")
            else:
                parts.append(f"{short[key]}{value}")
        return "+".join(parts) or "default"

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = Setting()
