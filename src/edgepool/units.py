"""Parsing of human units in specs: bandwidth ('100Mbps', '12.5MB/s'), latency ('5ms'), sizes ('4GiB')."""
from __future__ import annotations

import math
import re

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

_BANDWIDTH = {  # -> bytes/s
    "bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
    "b/s": 1, "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9, "kib/s": 2**10, "mib/s": 2**20, "gib/s": 2**30,
}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_SIZE = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

BANDWIDTH_HELP = "a number with a unit, e.g. '100Mbps', '1Gbps', '12.5MB/s'"
TIME_HELP = "a number with a unit, e.g. '5ms', '200us', '0.01s', or 0"
SIZE_HELP = "a number with a unit, e.g. '4GiB', '512MB', or a plain number of bytes"


def _parse(text: object, table: dict[str, float], what: str) -> float:
    if isinstance(text, bool):
        raise ValueError(f"expected {what}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise ValueError(f"expected a finite number; {what}")
        if text == 0 or table is _SIZE:
            return float(text)
        raise ValueError(f"expected {what}; a bare number has no unit")
    match = re.fullmatch(_NUMBER + r"\s*([A-Za-zµ/]+)", str(text).strip())
    if not match or match.group(2).lower() not in table:
        raise ValueError(f"expected {what}")
    value = float(match.group(1)) * table[match.group(2).lower()]
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number; {what}")
    return value


def parse_bandwidth(text: object) -> float:
    """Bytes per second. Lowercase 'b' in 'bps' means bits, 'B/s' means bytes."""
    value = _parse(text, _BANDWIDTH, BANDWIDTH_HELP)
    if value <= 0:
        raise ValueError(f"bandwidth must be > 0; expected {BANDWIDTH_HELP}")
    return value


def parse_time(text: object) -> float:
    value = _parse(text, _TIME, TIME_HELP)
    if value < 0:
        raise ValueError(f"latency must be >= 0; expected {TIME_HELP}")
    return value


def parse_size(text: object) -> int:
    value = _parse(text, _SIZE, SIZE_HELP)
    if value <= 0:
        raise ValueError(f"size must be > 0; expected {SIZE_HELP}")
    return int(value)


def format_bandwidth(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits:g}bps"
