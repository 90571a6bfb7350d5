"""What can happen to a pool while it runs: a device fails, a device joins, a link changes.

Plain data, below every layer that reads it: the elastic simulation (`edgepool.elastic.sim_events`) replays
these events, and a front end turns its users' text into them with `parse_device_at` (the one reading of
"DEVICE@NUMBER"; the caller names the field its user wrote, so an error points at it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar, Union

from edgepool.device import Device
from edgepool.errors import SpecError

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class DeviceFailure:
    """`device` stops at `at_s` seconds into the run and does not come back."""
    device: str
    at_s: float


@dataclass(frozen=True)
class DeviceJoin:
    """`device` (a name in the cluster, or a new `Device`) becomes available at `at_s`."""
    device: Union[str, Device]
    at_s: float


@dataclass(frozen=True)
class LinkChange:
    """The link between `a` and `b` changes to `bandwidth` bytes/s (and latency) at `at_s`."""
    a: str
    b: str
    bandwidth: float
    at_s: float
    latency_s: float | None = None


Event = Union[DeviceFailure, DeviceJoin, LinkChange]


def event_device(event: DeviceFailure | DeviceJoin) -> str:
    """The name of the device a failure or join is about."""
    return event.device if isinstance(event.device, str) else event.device.name


def step_number(text: str) -> int:
    """An iteration number: decimal digits only (no sign), e.g. "3"."""
    if not text.isdecimal():
        raise ValueError(f"not a step number: {text!r}")
    return int(text)


def seconds_number(text: str) -> float:
    """A time in seconds, e.g. "30" or "12.5"."""
    return float(text)


_DEVICE_AT = re.compile(r"([^@\s]+)@(.+)")


def parse_device_at(text: str, number: Callable[[str], N], *, field: str, accepted: str,
                    devices: Iterable[str] | None = None) -> tuple[str, N]:
    """"DEVICE@NUMBER" -> (device, number), `number` reading the part after "@" (`step_number`,
    `seconds_number`). A `SpecError` names `field` (what the caller's user wrote: a flag, a config key) and
    `accepted`; with `devices`, a device outside them is refused the same way."""
    match = _DEVICE_AT.fullmatch(text.strip())
    try:
        value = number(match.group(2)) if match else None
    except ValueError:
        value = None
    if value is None:
        raise SpecError(field=field, value=text, accepted=accepted)
    name = match.group(1)
    if devices is not None:
        devices = list(devices)
        if name not in devices:
            raise SpecError(field=field, value=name, accepted=", ".join(devices))
    return name, value
