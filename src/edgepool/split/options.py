"""The ways to run one image, and what each was measured to cost: the table every split decision reads.

`SplitOption` says where an image is computed (all on the device, split at a cut, all on the server) and
how what crosses the link is coded; `OptionMeasure` is one option's measured accuracy, bytes and compute
seconds. The rate-accuracy evaluation writes these, the planner and the adaptive-offloading environment
read them, and the testbed measures their end-to-end latency.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Location = Literal["device", "split", "server"]
LOCATIONS: tuple[Location, ...] = ("device", "split", "server")
INPUT_CODECS = ("jpeg", "webp", "png")  # offload: the input image coded with Pillow
FEATURE_METHODS = ("feature8", "bottlefit", "entropic")  # split: what the head sends


@dataclass(frozen=True)
class SplitOption:
    """One way to run an image.

    location "device": the whole network on the device (method "local"), nothing sent.
    location "server": the input coded with `method` in INPUT_CODECS at `level` (a quality; "" for PNG)
    and sent; the whole network on the server.
    location "split": the head (layers before `cut`) on the device, its output coded with `method` in
    FEATURE_METHODS at `level` (the bottleneck's name, e.g. "b12" or "beta0.1"), the tail on the server.
    `resolution` is the side, in pixels, the input is resized to before anything runs.
    """

    location: Location
    method: str
    level: str = ""
    resolution: int = 224
    cut: int | None = None

    @property
    def name(self) -> str:
        parts = {"device": ["local"], "server": ["offload", self.method, self.level],
                 "split": ["split", self.method, f"cut{self.cut}", self.level]}[self.location]
        if self.resolution != 224:
            parts.append(f"r{self.resolution}")
        return "-".join(p for p in parts if p)

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> "SplitOption":
        return cls(**{k: v for k, v in data.items() if k != "name"})


@dataclass(frozen=True)
class OptionMeasure:
    """What one option costs per image, measured on the test images.

    accuracy: top-1 agreement with the reference (the unsplit teacher, or the labels), a fraction.
    bytes_per_image: mean `len()` of what crosses the link (0 for local).
    device_s / server_s: compute seconds per image on each side on one thread of this host (coding
    included), before any device's slowdown is applied.
    """

    option: SplitOption
    accuracy: float
    bytes_per_image: float
    device_s: float
    server_s: float

    def latency_s(self, bandwidth_bps: float, device_slowdown: float = 1.0, server_slowdown: float = 1.0,
                  rtt_s: float = 0.0) -> float:
        """Modelled end-to-end seconds at `bandwidth_bps` bits/s: device compute, transfer, server compute."""
        if self.option.location == "device":
            return self.device_s * device_slowdown
        return (self.device_s * device_slowdown + 8 * self.bytes_per_image / bandwidth_bps
                + self.server_s * server_slowdown + rtt_s)

    def to_dict(self) -> dict:
        return {"option": self.option.to_dict(), "accuracy": self.accuracy,
                "bytes_per_image": self.bytes_per_image, "device_s": self.device_s, "server_s": self.server_s}

    @classmethod
    def from_dict(cls, data: dict) -> "OptionMeasure":
        return cls(option=SplitOption.from_dict(data["option"]), accuracy=data["accuracy"],
                   bytes_per_image=data["bytes_per_image"], device_s=data["device_s"],
                   server_s=data["server_s"])
