"""What one measured run of a setting yields, and the arithmetic from per-iteration timings to it.

Per iteration the run records the fetch stall (seconds blocked in `next(iterator)`) and the compute
(forward + backward + optimizer step); the iteration time is their sum. Warm-up iterations are dropped
before any of this is computed.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class Measurement:
    """One setting, measured. `stall_fraction` = total fetch stall / total iteration time;
    `iteration_time_cv` = sample standard deviation / mean of the iteration times; `cpu_utilization` = CPU
    seconds of the run's processes (trainer + loader workers) / (wall seconds x cores it may use)."""

    setting: dict
    label: str
    axis: str  # which knob the sweep turned for this row ("default", "workers", ..., "combined")
    iterations: int
    mean_iteration_s: float
    mean_stall_s: float
    mean_compute_s: float
    stall_fraction: float
    iteration_time_cv: float
    p95_iteration_s: float
    samples_per_s: float
    cpu_utilization: float
    cpu_cores_busy: float
    cores_available: float
    other_load_cores: float  # CPU cores other processes on the host kept busy during the run (neighbours)
    iteration_times_s: list[float] = field(default_factory=list)
    round_mean_iteration_s: list[float] = field(default_factory=list)  # one mean per round (child process)
    notes: list[str] = field(default_factory=list)  # how the setting was realized (cache drop method, ...)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Measurement":
        return cls(**data)


def coefficient_of_variation(values: list[float]) -> float:
    """Sample standard deviation over the mean (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else 0.0


def summarize(setting: dict, label: str, axis: str, stalls: list[float], computes: list[float], batch_size: int,
              warmup: int, cpu_seconds: float, wall_s: float, cores_available: float,
              notes: list[str] | None = None, other_cpu_seconds: float = 0.0,
              round_sizes: list[int] | None = None) -> Measurement:
    """A Measurement from raw per-iteration stalls and computes (warm-up ones included: the first `warmup`
    are dropped here). `cpu_seconds` and `wall_s` cover the measured iterations only; `round_sizes` splits the
    measured iterations into the rounds they came from (default: one round)."""
    stalls, computes = stalls[warmup:], computes[warmup:]
    if not stalls or len(stalls) != len(computes):
        raise ValueError(f"need as many stalls as computes beyond {warmup} warm-up iterations")
    times = [s + c for s, c in zip(stalls, computes)]
    n, total = len(times), sum(times)
    mean = total / n
    ranked = sorted(times)
    busy = cpu_seconds / wall_s if wall_s > 0 else 0.0
    round_means, start = [], 0
    for size in round_sizes or [n]:
        if size > 0:
            round_means.append(sum(times[start:start + size]) / size)
        start += size
    return Measurement(
        setting=setting, label=label, axis=axis, iterations=n, mean_iteration_s=mean, mean_stall_s=sum(stalls) / n,
        mean_compute_s=sum(computes) / n, stall_fraction=sum(stalls) / total if total > 0 else 0.0,
        iteration_time_cv=coefficient_of_variation(times), p95_iteration_s=ranked[min(n - 1, int(0.95 * n))],
        samples_per_s=batch_size / mean if mean > 0 else 0.0,
        cpu_utilization=min(1.0, busy / cores_available) if cores_available > 0 else 0.0,
        cpu_cores_busy=busy, cores_available=cores_available,
        other_load_cores=other_cpu_seconds / wall_s if wall_s > 0 else 0.0, iteration_times_s=times,
        round_mean_iteration_s=round_means, notes=list(notes or []))
