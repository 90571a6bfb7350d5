"""`Placement`: which side (the CPU in fp32, or the accelerator in one of its precisions) runs each unit.

A planner's decision, serializable like every `Plan`; `check` refuses a unit on a side that lacks its
precision, so no policy can hand the cost model or the emulator a placement the device cannot run.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from edgepool.device import Device
from edgepool.errors import SpecError

CPU_PRECISION = "fp32"


@dataclass(frozen=True, order=True)
class Target:
    side: str  # "cpu" | "accelerator"
    precision: str

    def __str__(self) -> str:
        return f"{'cpu' if self.side == 'cpu' else 'acc'}:{self.precision}"

    @property
    def on_accelerator(self) -> bool:
        return self.side == "accelerator"


CPU = Target("cpu", CPU_PRECISION)


def device_targets(device: Device) -> list[Target]:
    """Where a unit can run on this device: the CPU in fp32, then the accelerator's precisions, fastest first."""
    if device.accelerator is None:
        raise SpecError(field="device", value=device.name, accepted="a device with an accelerator (catalog "
                        "entries with an `accelerator` section, e.g. rpi5-hailo-8l, phone-snapdragon-8-gen-3)")
    return [CPU] + [Target("accelerator", p) for p in device.accelerator.precisions]


def fastest_accelerator_target(device: Device) -> Target:
    return device_targets(device)[1]


class Placement(BaseModel):
    """One target per unit, and the policy that chose them."""

    model_config = ConfigDict(frozen=True)

    policy: str
    targets: tuple[Target, ...]

    @property
    def precisions(self) -> tuple[str, ...]:
        """What decides accuracy: a unit computes the same on the CPU and on an accelerator at one precision."""
        return tuple(t.precision for t in self.targets)

    @property
    def switches(self) -> int:
        """Hand-overs between CPU and accelerator, counting the input arriving on and the output leaving
        from the CPU."""
        sides = ["cpu"] + [t.side for t in self.targets] + ["cpu"]
        return sum(a != b for a, b in zip(sides, sides[1:]))

    def on_accelerator(self) -> int:
        return sum(t.on_accelerator for t in self.targets)

    def check(self, device: Device, num_units: int) -> "Placement":
        if len(self.targets) != num_units:
            raise SpecError(field="placement", value=len(self.targets), accepted=f"{num_units} targets, one per unit")
        allowed = set(device_targets(device))
        for i, target in enumerate(self.targets):
            if target not in allowed:
                raise SpecError(field=f"placement[{i}]", value=str(target),
                                accepted=", ".join(str(t) for t in device_targets(device)) + f" on {device.name}")
        return self

    def describe(self) -> str:
        return " ".join(str(t) for t in self.targets)


def uniform(policy: str, target: Target, num_units: int) -> Placement:
    return Placement(policy=policy, targets=(target,) * num_units)
