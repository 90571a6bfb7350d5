"""Jetson power rails: jetson-stats (`jtop`) where installed, otherwise the `tegrastats` tool's output lines.

Both report power, not energy, so the meter integrates it (`PowerSampler`). tegrastats prints each rail as
`NAME instant/average`, in mW with a unit since JetPack 5 (`VDD_IN 5263mW/5263mW`) and without one before
(`POM_5V_IN 4520/4680`); JetPack 7 adds a third figure (`VDD_GPU_SOC 5139mW/5139mW/5139mW`). Rail names differ by board: Nano POM_5V_IN/GPU/CPU; TX2 VDD_IN and VDD_SYS_* (or
VDD_CPU, VDD_GPU, ...); AGX Xavier on JetPack 4.2 GPU, CPU, SOC, CV, VDDRQ, SYS5V; Xavier NX and Orin NX/Nano
VDD_IN, VDD_CPU_GPU_CV, VDD_SOC; AGX Orin VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO and unconnected
`NC` channels. The module total is the input rail (VDD_IN, POM_5V_IN) where there is one: the other rails are
parts of it; on boards without one (AGX Xavier, AGX Orin) it is the sum of the rails, as jetson-stats does.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from edgepool.meters.base import Clock, Meter
from edgepool.meters.integrate import PowerFn, PowerSampler

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
TOTAL = "total"  # jetson-stats' own total, where it gives one
NUMBER = r"(\d+(?:\.\d+)?)(?:mW)?"
RAIL = re.compile(rf"^{NUMBER}/{NUMBER}(?:/{NUMBER})?$")  # instant/average, and a third figure on JetPack 7
NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
UNCONNECTED = "NC"


@dataclass
class TegrastatsPower:
    """The rails of one tegrastats line, in milliwatts: the instant value and tegrastats' running average."""

    instant_mw: dict[str, float] = field(default_factory=dict)
    average_mw: dict[str, float] = field(default_factory=dict)

    def watts(self) -> dict[str, float]:
        return {rail: mw / 1000.0 for rail, mw in self.instant_mw.items()}


def parse_tegrastats(line: str) -> TegrastatsPower:
    """Rails of one tegrastats output line (an empty result: the line has none, e.g. tegrastats run without
    root on some boards, or a TX1). RAM/SWAP/IRAM figures look alike but carry MB/kB and are skipped."""
    tokens = line.split()
    power = TegrastatsPower()
    for name, value in zip(tokens, tokens[1:]):
        match = RAIL.match(value)
        if not match or not NAME.match(name) or name == UNCONNECTED:
            continue
        key, n = name, 2
        while key in power.instant_mw:  # a rail name printed twice keeps both
            key, n = f"{name}_{n}", n + 1
        power.instant_mw[key], power.average_mw[key] = float(match[1]), float(match[2])
    return power


def module_total(values: dict[str, float]) -> float:
    """The module's figure from per-rail figures (watts or joules): the input rail, else jtop's total, else
    the sum of the rails."""
    for rail in (*INPUT_RAILS, TOTAL):
        if rail in values:
            return values[rail]
    return sum(values.values())


class JetsonMeter(Meter):
    """Joules per rail, integrated from `power` (watts per rail) sampled every `interval_s`."""

    name = "jetson"
    covers = "this Jetson module (input rail, or the sum of its rails)"

    def __init__(self, power: PowerFn, source: str, interval_s: float = 0.1, clock: Clock = time.monotonic,
                 threaded: bool = True, on_close=None):
        self.source, self._on_close = source, on_close
        first = power()
        if not first:
            raise RuntimeError(f"{source} reports no power rails")
        self._domains = list(first)
        self.sampler = PowerSampler(power, interval_s, clock, threaded)

    @classmethod
    def from_jtop(cls, **options) -> "JetsonMeter":
        from jtop import jtop  # optional dependency: jetson-stats (and its service)

        handle = jtop()
        handle.start()

        def power() -> dict[str, float]:
            reading = handle.power
            watts = {rail: v["power"] / 1000.0 for rail, v in reading.get("rail", {}).items() if "power" in v}
            if "power" in reading.get("tot", {}):
                watts[TOTAL] = reading["tot"]["power"] / 1000.0
            return watts
        return cls(power, "jetson-stats (jtop)", on_close=handle.close, **options)

    @classmethod
    def from_tegrastats(cls, command: str | None = None, interval_ms: int = 100, wait_s: float = 3.0,
                        **options) -> "JetsonMeter":
        reader = TegrastatsReader(command or shutil.which("tegrastats") or "tegrastats", interval_ms)
        if not reader.wait_first(wait_s):
            reader.close()
            raise RuntimeError("tegrastats printed no line with power rails (needs root on some boards)")
        return cls(reader.watts, "tegrastats", on_close=reader.close, **options)

    def domains(self) -> list[str]:
        return list(self._domains)

    def read(self) -> dict[str, float]:
        return self.sampler.read()

    def total(self, joules: dict[str, float]) -> float:
        return module_total(joules)

    def close(self) -> None:
        self.sampler.close()
        if self._on_close:
            self._on_close()


class TegrastatsReader:
    """Runs `tegrastats --interval MS` and keeps the rails of its latest line."""

    def __init__(self, command: str, interval_ms: int):
        self.process = subprocess.Popen([command, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.latest: dict[str, float] = {}
        self._seen = threading.Event()
        threading.Thread(target=self._read, name="tegrastats", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            watts = parse_tegrastats(line).watts()
            if watts:
                self.latest = watts
                self._seen.set()

    def wait_first(self, timeout_s: float) -> bool:
        return self._seen.wait(timeout_s)

    def watts(self) -> dict[str, float]:
        return dict(self.latest)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
