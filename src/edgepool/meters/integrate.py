"""Energy from sources that only report power (Jetson rails, NVML without an energy counter): the trapezoid rule
over samples taken at a fixed interval by a background thread."""
from __future__ import annotations

import threading
import time
from typing import Callable

from edgepool.meters.base import Clock

PowerFn = Callable[[], dict[str, float]]  # watts per domain, now


class PowerIntegrator:
    """Cumulative joules per domain from (time, watts) samples: each step adds (t1 - t0) * (w0 + w1) / 2."""

    def __init__(self) -> None:
        self.joules: dict[str, float] = {}
        self._t: float | None = None
        self._w: dict[str, float] = {}

    def add(self, t: float, watts: dict[str, float]) -> None:
        if self._t is not None and t > self._t:
            dt = t - self._t
            for domain, w in watts.items():
                w0 = self._w.get(domain, w)  # a domain new in this sample: hold its value back to the last
                self.joules[domain] = self.joules.get(domain, 0.0) + dt * (w0 + w) / 2
        for domain in watts:
            self.joules.setdefault(domain, 0.0)
        if self._t is None or t >= self._t:
            self._t, self._w = t, dict(watts)


class PowerSampler:
    """Samples `power` every `interval_s` in a daemon thread (started by the first `read`) and integrates it.

    `read()` also samples, so the integral reaches the moment of the read. `clock` and `threaded=False` let tests
    drive it by hand."""

    def __init__(self, power: PowerFn, interval_s: float = 0.1, clock: Clock = time.monotonic,
                 threaded: bool = True):
        self.power, self.interval_s, self.clock, self.threaded = power, interval_s, clock, threaded
        self.integrator = PowerIntegrator()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        watts = self.power()
        with self._lock:
            self.integrator.add(self.clock(), watts)

    def read(self) -> dict[str, float]:
        if self.threaded and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
            self._thread.start()
        self.sample()
        with self._lock:
            return dict(self.integrator.joules)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.interval_s))
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample is skipped; the trapezoid spans the gap
                continue
