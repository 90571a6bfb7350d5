"""`Report`: what every run, simulated or measured, produces, with the same fields so they compare."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepool.atomic import write_text_atomic

REPORT_VERSION = 1


class DeviceStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    busy_s: float = 0.0
    utilization: float = 0.0
    peak_memory_bytes: float = 0.0
    memory_limit_bytes: float | None = None
    energy_j: float = 0.0
    energy_source: Literal["modelled", "measured"] = "modelled"
    energy_meter: str | None = None     # measured: the meter that read it (e.g. "rapl", "nvml", "jetson")
    # modelled: where energy_j went (compute, idle while waiting, communication); they sum to energy_j
    energy_breakdown_j: dict[str, float] = Field(default_factory=dict)


# Timeline kinds a device spends computing, and moving data (busy time and the energy breakdown read them).
COMPUTE_KINDS = ("fwd", "bwd", "optimizer")
NETWORK_KINDS = ("send", "recv", "allreduce")


class TimelineEvent(BaseModel):
    """One span of work on one device. kind: fwd, bwd, send, recv, allreduce, optimizer, recovery, ..."""
    model_config = ConfigDict(extra="forbid")
    device: str
    kind: str
    start: float
    end: float
    microbatch: int | None = None
    stage: int | None = None
    iteration: int | None = None
    request: str | None = None        # serving: the request this span belongs to (kinds first-token, decode)


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = REPORT_VERSION
    source: Literal["simulated", "measured"]
    where: str = Field(description="simulator + cost model, or the machine and command that measured it")
    planner: str | None = None
    model: str | None = None
    cluster: str | None = None
    feasible: bool = True
    infeasible_reason: str | None = None
    throughput: float | None = Field(default=None, description="samples/s")
    iteration_time_s: float | None = None
    latency_s: float | None = None
    per_device: dict[str, DeviceStats] = Field(default_factory=dict)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        return cls.model_validate_json(Path(path).read_text())

    def relative_error(self, other: "Report", field: str = "throughput") -> float:
        """|self - other| / other: the simulator's error when self is simulated and other measured."""
        a, b = getattr(self, field), getattr(other, field)
        return abs(a - b) / b
