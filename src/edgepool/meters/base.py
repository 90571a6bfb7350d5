"""`Meter`: one interface over every energy source, and `MeterSession`: the joules between a start and a stop.

A meter reports *cumulative* joules per domain (a RAPL zone, a GPU, a Jetson rail) since an origin of its own;
only differences mean anything. Counters that wrap (RAPL's `energy_uj` at `max_energy_range_uj`) say so through
`wrap_j`, and the session adds the range back once per wrap. A session that polls (`poll_s`) sees every wrap of
a long run; one that reads only at start and stop sees at most one, which is enough for RAPL's ~262 kJ range
below ~70 W of package power over an hour.
"""
from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator

Clock = Callable[[], float]


class Meter(ABC):
    """An energy source on this host. Subclasses set `name` ("rapl", "nvml", "jetson") and `covers` (what the
    total stands for, in words: "the whole host's CPU packages and DRAM", "GPU boards", "the Jetson module")."""

    name: str = "?"
    covers: str = "?"

    @abstractmethod
    def domains(self) -> list[str]:
        """The domains `read` reports, in a stable order."""

    @abstractmethod
    def read(self) -> dict[str, float]:
        """Cumulative joules per domain (an arbitrary origin: use differences)."""

    def wrap_j(self) -> dict[str, float]:
        """Per domain, the joules at which its counter wraps back to 0 (absent: it does not wrap)."""
        return {}

    def total(self, joules: dict[str, float]) -> float:
        """One figure for the whole of what the meter covers (default: the sum; sources with nested or input
        domains override it so nothing counts twice)."""
        return sum(joules.values())

    def close(self) -> None:
        """Stop background sampling, release the library."""


@dataclass
class Measurement:
    """Joules one meter saw between a start and a stop."""

    meter: str
    covers: str
    joules: dict[str, float]
    total_j: float
    seconds: float
    wraps: dict[str, int] = field(default_factory=dict)  # counter wrap-arounds added back, per domain

    @property
    def mean_power_w(self) -> float:
        return self.total_j / self.seconds if self.seconds > 0 else 0.0


def wrapped_delta(start: float, end: float, wrap: float | None) -> tuple[float, int]:
    """end - start for a counter that wraps at `wrap` (None: never): (delta, wraps seen, 0 or 1)."""
    if end >= start or not wrap:
        return end - start, 0
    return end + wrap - start, 1


class MeterSession:
    """Energy from `start()` to `stop()`; with `poll_s`, a background thread reads the meter meanwhile so that
    each counter wrap is seen (and power-only meters keep integrating)."""

    def __init__(self, meter: Meter, poll_s: float | None = None, clock: Clock = time.monotonic):
        self.meter, self.poll_s, self.clock = meter, poll_s, clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, float] = {}
        self._joules: dict[str, float] = {}
        self._wraps: dict[str, int] = {}
        self._t0 = 0.0

    def start(self) -> "MeterSession":
        self._wrap = self.meter.wrap_j()
        self._last = self.meter.read()
        self._joules = {d: 0.0 for d in self._last}
        self._wraps = {d: 0 for d in self._last}
        self._t0 = self.clock()
        if self.poll_s:
            self._thread = threading.Thread(target=self._poll, name=f"meter-{self.meter.name}", daemon=True)
            self._thread.start()
        return self

    def sample(self) -> None:
        """Read once and add what changed since the previous reading (the poll thread calls this)."""
        reading = self.meter.read()
        with self._lock:
            for domain, value in reading.items():
                if domain not in self._last:  # a domain that appeared late (a rail jtop reports later)
                    self._last[domain], self._joules[domain], self._wraps[domain] = value, 0.0, 0
                    continue
                delta, wrapped = wrapped_delta(self._last[domain], value, self._wrap.get(domain))
                self._joules[domain] += delta
                self._wraps[domain] += wrapped
                self._last[domain] = value

    def stop(self) -> Measurement:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()
        seconds = self.clock() - self._t0
        with self._lock:
            joules = dict(self._joules)
            wraps = {d: n for d, n in self._wraps.items() if n}
        return Measurement(self.meter.name, self.meter.covers, joules, self.meter.total(joules), seconds, wraps)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.sample()


@contextlib.contextmanager
def measure(meter: Meter, poll_s: float | None = 30.0, clock: Clock = time.monotonic
            ) -> Iterator["MeasureResult"]:
    """`with measure(meter) as m: work()`; afterwards `m.measurement` holds the joules of the block."""
    result = MeasureResult()
    session = MeterSession(meter, poll_s, clock).start()
    try:
        yield result
    finally:
        result.measurement = session.stop()


@dataclass
class MeasureResult:
    measurement: Measurement | None = None
