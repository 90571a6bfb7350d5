"""Where to split: local, offload (which codec) or a cut with a bottleneck, for a device, a server and a
bandwidth, from the cost model and the measured rate-accuracy table.

Each option's latency is modelled as device compute + bytes / bandwidth + server compute (+ one round
trip); compute is the table's seconds on one host core scaled by how much slower (or faster) the device
and the server are than that core. Among the options that keep accuracy within `max_loss` of the
unsplit reference, the planner picks the fastest. The choice is checked against measured latencies in
the benchmark (`planner_regret_max`).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgepool.errors import SpecError
from edgepool.split.options import OptionMeasure


@dataclass(frozen=True)
class SplitChoice:
    """The planner's decision and why: the option, its modelled latency and the runner-up."""

    measure: OptionMeasure
    predicted_latency_s: float
    bandwidth_bps: float
    accuracy_floor: float
    candidates: int
    runner_up: str | None = None

    @property
    def name(self) -> str:
        return self.measure.option.name

    def to_dict(self) -> dict:
        return {"option": self.measure.option.to_dict(), "predicted_latency_s": self.predicted_latency_s,
                "accuracy": self.measure.accuracy, "bytes_per_image": self.measure.bytes_per_image,
                "bandwidth_bps": self.bandwidth_bps, "accuracy_floor": self.accuracy_floor,
                "candidates": self.candidates, "runner_up": self.runner_up}


def reference_accuracy(rows: list[OptionMeasure]) -> float:
    """The unsplit model's accuracy: the local option's row."""
    local = [r for r in rows if r.option.location == "device" and r.option.resolution == max(
        o.option.resolution for o in rows)]
    if not local:
        raise SpecError(field="table", value="no local row", accepted="a table with the local option measured")
    return local[0].accuracy


def eligible(rows: list[OptionMeasure], max_loss: float) -> list[OptionMeasure]:
    """Rows within `max_loss` (a fraction, 0.01 = one point) of the unsplit reference."""
    floor = reference_accuracy(rows) - max_loss
    return [r for r in rows if r.accuracy >= floor - 1e-12]


def plan_split(rows: list[OptionMeasure], bandwidth_bps: float, device_slowdown: float,
               server_slowdown: float, max_loss: float = 0.01, rtt_s: float = 0.0) -> SplitChoice:
    if bandwidth_bps <= 0:
        raise SpecError(field="bandwidth", value=bandwidth_bps, accepted="a positive rate in bits/s")
    for name, value in (("device_slowdown", device_slowdown), ("server_slowdown", server_slowdown)):
        if value <= 0:
            raise SpecError(field=name, value=value, accepted="a positive factor (1 = one core of this host)")
    candidates = eligible(rows, max_loss)
    ranked = sorted(candidates, key=lambda r: r.latency_s(bandwidth_bps, device_slowdown, server_slowdown, rtt_s))
    best = ranked[0]
    return SplitChoice(best, best.latency_s(bandwidth_bps, device_slowdown, server_slowdown, rtt_s), bandwidth_bps,
                       reference_accuracy(rows) - max_loss, len(candidates),
                       ranked[1].option.name if len(ranked) > 1 else None)
