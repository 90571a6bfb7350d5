"""Energy of a measured run from this host's meter, as `Report.metrics` entries.

A run's timed iterations happen inside worker processes, so the meter reads around the whole launch (process
start to exit: start-up, warm-up and timed iterations together), and a host meter sees the whole host,
including whatever else it ran meanwhile. Per-device `energy_j` therefore stays modelled; the measured figure
sits beside it. Without a meter, the metrics say energy is modelled and why.
"""
from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field
from typing import Callable, Iterator

from edgepool.meters.base import Measurement, MeterSession
from edgepool.meters.detect import LOOKED_FOR, MeterSearch, find_meters

NO_METER = f"modelled: no energy meter on this host (looked for {LOOKED_FOR})"
PER_DEVICE_MODEL = "per device: catalog idle/max power x measured busy/idle time per iteration"


@dataclass
class HostEnergy:
    """What `host_energy` saw: the measurement (None: no meter, or it failed) and why not."""

    host: str
    measurement: Measurement | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    def metrics(self, rank_hosts: dict[str, str], iteration_time_s: float | None = None) -> dict:
        return energy_metrics(self.measurement, self.host, rank_hosts, iteration_time_s, self.reasons)


@contextlib.contextmanager
def host_energy(search: Callable[[], MeterSearch] = find_meters, poll_s: float = 30.0) -> Iterator[HostEnergy]:
    """Measure the block with this host's first meter; a meter that fails never fails the run."""
    found = search()
    energy = HostEnergy(platform.node(), reasons=dict(found.reasons))
    meter = found.first()
    for extra in found.meters[1:]:
        extra.close()
    session = None
    if meter is not None:
        try:
            session = MeterSession(meter, poll_s).start()
        except Exception as error:  # noqa: BLE001
            energy.reasons[meter.name] = f"reading failed at start: {error}"
    try:
        yield energy
    finally:
        if session is not None:
            try:
                energy.measurement = session.stop()
            except Exception as error:  # noqa: BLE001
                energy.reasons[meter.name] = f"reading failed at stop: {error}"
        if meter is not None:
            meter.close()


def energy_metrics(measurement: Measurement | None, meter_host: str, rank_hosts: dict[str, str],
                   iteration_time_s: float | None = None, reasons: dict[str, str] | None = None) -> dict:
    """`Report.metrics` entries for a run's energy. `rank_hosts`: device -> the host its rank ran on."""
    if measurement is None:
        return {"energy": f"{NO_METER}; {PER_DEVICE_MODEL}", "energy_meter": None,
                "energy_meter_search": dict(reasons or {})}
    here = sorted(d for d, h in rank_hosts.items() if h == meter_host)
    elsewhere = sorted({h for h in rank_hosts.values() if h != meter_host})
    if not elsewhere:
        scope = (f"the whole host's energy ({measurement.covers}) while all {len(here)} ranks ran on it, "
                 "including anything else the host ran meanwhile")
    else:
        scope = (f"{measurement.covers} on {meter_host} only (ranks {', '.join(here) or 'none'}); "
                 f"ranks on {', '.join(elsewhere)} not metered")
    metrics = {
        "energy": (f"measured: {measurement.meter} on {meter_host}, {scope}, over the whole launch (start-up, "
                   f"warm-up and timed iterations); per-device energy_j stays modelled ({PER_DEVICE_MODEL})"),
        "energy_meter": measurement.meter,
        "measured_energy_j": measurement.total_j,
        "measured_energy_j_by_domain": dict(measurement.joules),
        "measured_energy_seconds": measurement.seconds,
        "measured_mean_power_w": measurement.mean_power_w,
        "measured_energy_host": meter_host,
        "measured_energy_whole_host": not elsewhere,
    }
    if measurement.wraps:
        metrics["measured_energy_counter_wraps"] = dict(measurement.wraps)
    if iteration_time_s:
        # an estimate, named so: the launch's mean power times one timed iteration
        metrics["measured_mean_power_x_iteration_time_j"] = measurement.mean_power_w * iteration_time_s
    return metrics
