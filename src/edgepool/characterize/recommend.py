""""What to set", derived from the measurements: for each knob, the best value measured against its reference
row, kept only when the gain is larger than the run-to-run noise the iteration times themselves show.

A gain counts when it exceeds max(5%, twice the relative standard error of the difference of the two mean
iteration times). The standard error comes from the spread of the per-round means where a setting ran in
several rounds (that spread includes the drift of a shared machine's load, which the iterations of one round
do not show), else from the iteration times' CV and count. Conditions a user does not choose for speed (a cold
page cache, a lower power mode, isolation) are reported as costs, with and without loader workers where both
were measured.
"""
from __future__ import annotations

import math

from edgepool.characterize.measurement import Measurement
from edgepool.characterize.setting import DEFAULT, NAMESPACES_LABEL

_DEFAULTS = DEFAULT.to_dict()

KNOBS = ("workers", "prefetch", "pin_memory", "batch", "storage")
CONDITIONS = ("cache", "power", "runtime")  # not chosen for speed: reported as what they cost
MIN_GAIN = 0.05


def relative_standard_error(m: Measurement) -> float:
    """Standard error of the mean iteration time over the mean: from round means when there are several."""
    rounds = m.round_mean_iteration_s
    if len(rounds) >= 2:
        mean = sum(rounds) / len(rounds)
        var = sum((r - mean) ** 2 for r in rounds) / (len(rounds) - 1)
        from_rounds = math.sqrt(var / len(rounds)) / mean if mean > 0 else 0.0
        return max(from_rounds, m.iteration_time_cv / math.sqrt(max(m.iterations, 1)))
    return m.iteration_time_cv / math.sqrt(max(m.iterations, 1))


def noise_threshold(a: Measurement, b: Measurement) -> float:
    """The relative throughput change two measurements must show to count as real rather than noise."""
    return max(MIN_GAIN, 2 * math.hypot(relative_standard_error(a), relative_standard_error(b)))


def gain(row: Measurement, ref: Measurement) -> float:
    """Relative change of samples per second against `ref` (+0.5 = 50% more samples per second)."""
    return row.samples_per_s / ref.samples_per_s - 1 if ref.samples_per_s > 0 else 0.0


def recommend(default: Measurement, rows: list[Measurement]) -> list[str]:
    """Short lines: what to set (or leave), what each condition costs, and the best setting overall."""
    lines = []
    for axis in KNOBS:
        candidates = [r for r in rows if r.axis == axis]
        if not candidates:
            continue
        ref = _reference(axis, default, rows)
        best = max(candidates, key=lambda r: r.samples_per_s)
        g, threshold = gain(best, ref), noise_threshold(best, ref)
        change = _knob_text(best, ref)
        stall = f"fetch stall {ref.stall_fraction:.0%} -> {best.stall_fraction:.0%}"
        if g > threshold:
            lines.append(f"set {change}: {ref.samples_per_s:.0f} -> {best.samples_per_s:.0f} samples/s "
                         f"({g:+.0%}), {stall}")
        elif g < -threshold:
            lines.append(f"{axis}: keep {ref.label}; every other value was slower beyond noise (best {change}: "
                         f"{g:+.0%}, noise {threshold:.0%}, {stall}){_pin_note(best)}")
        else:
            lines.append(f"{axis}: no value beat {ref.label} beyond noise (best {change}: {g:+.0%}, noise "
                         f"{threshold:.0%}, {stall}){_pin_note(best)}")
    for axis in CONDITIONS:
        for row in (r for r in rows if r.axis == axis):
            g, threshold = gain(row, default), noise_threshold(row, default)
            text = (f"{_condition(row)}: costs {-g:.0%} of throughput" if g < -threshold else
                    f"{_condition(row)}: {g:+.0%} throughput, within noise ({threshold:.0%})")
            paired = _paired_with_workers(row, rows)
            ref = _workers_row(paired, rows) if paired is not None else None
            if ref is not None:
                text += f"; with workers={ref.setting['workers']}: {gain(paired, ref):+.0%}"
            lines.append(text + f" (fetch stall {default.stall_fraction:.0%} -> {row.stall_fraction:.0%})")
    busy = sum(r.other_load_cores for r in rows) / len(rows)
    if busy > 0.25:
        lines.append(f"other processes kept {busy:.1f} of {default.cores_available:g} cores busy on average during "
                     f"these runs: the figures hold for a host that loaded")
    best = max(rows, key=lambda r: r.samples_per_s)
    lines.append(f"best measured: {best.label} at {best.samples_per_s:.0f} samples/s, "
                 f"{best.samples_per_s / default.samples_per_s:.2f}x the default; fetch stall "
                 f"{default.stall_fraction:.0%} -> {best.stall_fraction:.0%}, iteration CV "
                 f"{default.iteration_time_cv:.2f} -> {best.iteration_time_cv:.2f}")
    return lines


def _condition(row: Measurement) -> str:
    """How a condition row is named in a recommendation line (emulation and isolation said plainly)."""
    if row.setting["power_mode"] != "full":
        return f"power mode {row.setting['power_mode']} (emulated: CPU quota)"
    if row.setting["runtime"] == "namespaces":
        return NAMESPACES_LABEL
    if row.setting["runtime"] == "container":
        return "container"
    return f"page cache {row.setting['cache']}" if row.setting["cache"] != "warm" else row.label


def _reference(axis: str, default: Measurement, rows: list[Measurement]) -> Measurement:
    """What a knob is compared with: the default, except prefetch (only exists with workers): the widest
    workers row with PyTorch's default prefetch factor."""
    if axis == "prefetch":
        widest = [r for r in rows if r.axis == "workers" and r.setting["prefetch_factor"] is None]
        if widest:
            return max(widest, key=lambda r: r.setting["workers"])
    return default


def _workers_row(paired: Measurement, rows: list[Measurement]) -> Measurement | None:
    """The plain workers row with the same worker count as a combined row."""
    for r in rows:
        if r.axis == "workers" and r.setting["workers"] == paired.setting["workers"]:
            return r
    return None


def _paired_with_workers(row: Measurement, rows: list[Measurement]) -> Measurement | None:
    """The combined row that sets the same condition together with loader workers, if measured."""
    changed = {k: v for k, v in row.setting.items() if k != "workers" and v != _DEFAULTS.get(k)}
    for other in rows:
        if other.axis == "combined" and other.setting["workers"] > 0 and \
                {k: v for k, v in other.setting.items() if k != "workers" and v != _DEFAULTS.get(k)} == changed:
            return other
    return None


def _knob_text(row: Measurement, ref: Measurement) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.setting.items() if v != ref.setting.get(k)) or row.label


def _pin_note(row: Measurement) -> str:
    if any(n.startswith("pin_memory requested") for n in row.notes):
        return "; no accelerator here, so torch does not pin"
    return ""


