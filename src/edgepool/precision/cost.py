"""Time and energy of a placement on a device (simulated, from the cost model), per inference of one input.

Each unit's time on each side is the roofline of `CostModel.compute_time`: its FLOPs over the side's peak at
that precision x efficiency, or its bytes (weights and activations at that precision) over memory
bandwidth. Where consecutive units switch side, the activation crosses the CPU-accelerator link (latency +
bytes at the accelerator's precision over the link's bandwidth); the input starts and the prediction ends
on the CPU. Weights beyond the accelerator's memory cross the link on every inference (how the Coral Edge
TPU streams parameters that miss its SRAM). Energy: the board's idle power for the whole time, the CPU's
dynamic power while it computes or drives a hand-over, the accelerator's active power while it computes and
its idle power otherwise. Every figure here is modelled, never measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.costmodel import PRECISION_BYTES, CostModel
from edgepool.device import Device
from edgepool.precision.placement import Placement, Target, device_targets
from edgepool.profile import ModelProfile


@dataclass(frozen=True)
class UnitCost:
    """One unit for one input: FLOPs, fp32 bytes of weights and of the activation it reads and writes."""

    name: str
    flops: float
    param_bytes: float
    input_bytes: float
    output_bytes: float
    measured_cpu_s: float | None = None  # fp32 forward on this machine, per input
    lookup_table_bytes: float = 0.0  # embedding tables among the weights: a lookup reads rows, not the table

    @property
    def weight_read_bytes(self) -> float:
        """Weight bytes one input reads: every weight, except that a lookup reads only the rows it returns."""
        if not self.lookup_table_bytes:
            return self.param_bytes
        return self.param_bytes - self.lookup_table_bytes + self.output_bytes


def unit_costs(profile: ModelProfile, lookup_table_bytes: list[float] | None = None) -> list[UnitCost]:
    """Per-input costs from a profile of the units (the profile is of a batch: divide by it)."""
    n = profile.batch
    tables = lookup_table_bytes or [0.0] * len(profile.layers)
    return [UnitCost(layer.name.split(":", 1)[-1], layer.fwd_flops / n, layer.param_bytes, layer.input_bytes / n,
                     layer.output_bytes / n, None if layer.fwd_time_s is None else layer.fwd_time_s / n, table)
            for layer, table in zip(profile.layers, tables)]


def side_devices(device: Device) -> dict[str, Device]:
    """The CPU and the accelerator as `Device`s the cost model can cost: the CPU at its own fp32 peak (not a
    GPU's), the accelerator at its precisions, reading the host's memory."""
    accelerator = device.accelerator
    cpu = device.model_copy(update={"peak_flops": {"fp32": device.cpu_peak()}, "accelerator": None})
    peaks = dict(accelerator.peak_flops)
    acc = Device(name=accelerator.name, kind="npu", peak_flops={"fp32": peaks.get("fp32", min(peaks.values())),
                                                                **peaks},
                 memory_bytes=accelerator.memory_bytes, memory_bandwidth=device.memory_bandwidth, cpu_cores=1,
                 power_idle_w=accelerator.power_idle_w, power_max_w=accelerator.power_active_w,
                 efficiency=accelerator.efficiency)
    return {"cpu": cpu, "accelerator": acc}


@dataclass
class Estimate:
    """What the cost model says of one placement (simulated)."""

    time_s: float
    energy_j: float
    cpu_s: float
    accelerator_s: float
    transfer_s: float
    streamed_bytes: float
    switches: int


@dataclass
class CostTable:
    """Every number a policy optimizes: unit x target times, hand-over costs, powers. Built once per device."""

    device: Device
    units: list[UnitCost]
    targets: list[Target]
    unit_s: list[dict[Target, float]] = field(default_factory=list)

    @classmethod
    def build(cls, device: Device, units: list[UnitCost], cost_model: CostModel | None = None) -> "CostTable":
        cost_model = cost_model or CostModel()
        sides = side_devices(device)
        targets = device_targets(device)
        table = []
        for unit in units:
            row = {}
            for t in targets:
                scale = PRECISION_BYTES[t.precision] / 4
                moved = (unit.weight_read_bytes + unit.input_bytes + unit.output_bytes) * scale
                row[t] = cost_model.compute_time(unit.flops, moved, sides[t.side], precision=t.precision)
            table.append(row)
        return cls(device, units, targets, table)

    @property
    def num_units(self) -> int:
        return len(self.units)

    # ------------------------------------------------------------------ pieces the policies add up
    def boundary_bytes(self, i: int) -> float:
        """fp32 bytes crossing boundary i (0: the input, n: the prediction)."""
        return self.units[i].input_bytes if i < self.num_units else self.units[-1].output_bytes

    def handover_s(self, i: int, before: Target | None, after: Target | None) -> float:
        """Cost of boundary i between `before` (None: the input, on the CPU) and `after` (None: the output)."""
        a, b = before.side if before else "cpu", after.side if after else "cpu"
        if a == b:
            return 0.0
        accelerator_side = before if a == "accelerator" else after
        link = self.device.accelerator
        nbytes = self.boundary_bytes(i) * PRECISION_BYTES[accelerator_side.precision] / 4
        return link.link_latency_s + nbytes / link.link_bandwidth

    def prefix(self, targets: tuple[Target, ...], k: int) -> Estimate:
        """Units [0, k) on `targets` with the hand-overs into them (the input starts on the CPU)."""
        sides = (None,) + tuple(targets[:k])
        cpu = sum(self.unit_s[i][t] for i, t in enumerate(targets[:k]) if not t.on_accelerator)
        acc = sum(self.unit_s[i][t] for i, t in enumerate(targets[:k]) if t.on_accelerator)
        transfer = sum(self.handover_s(i, sides[i], sides[i + 1]) for i in range(k))
        switches = sum(self.handover_s(i, sides[i], sides[i + 1]) > 0 for i in range(k))
        total = cpu + acc + transfer
        return Estimate(total, self.energy_j(total, cpu + transfer, acc), cpu, acc, transfer, 0.0, switches)

    def streamed_bytes(self, targets: tuple[Target, ...]) -> float:
        """Weights on the accelerator beyond its memory, streamed over the link on every inference."""
        placed = sum(u.param_bytes * PRECISION_BYTES[t.precision] / 4
                     for u, t in zip(self.units, targets) if t.on_accelerator)
        return max(0.0, placed - self.device.accelerator.memory_bytes)

    def estimate(self, placement: Placement | tuple[Target, ...]) -> Estimate:
        targets = placement.targets if isinstance(placement, Placement) else tuple(placement)
        if len(targets) != self.num_units:
            raise ValueError(f"placement has {len(targets)} targets for {self.num_units} units")
        body = self.prefix(targets, self.num_units)
        back = self.handover_s(self.num_units, targets[-1], None)  # the prediction returns to the CPU
        streamed = self.streamed_bytes(targets)
        transfer = body.transfer_s + back + streamed / self.device.accelerator.link_bandwidth
        total = body.cpu_s + body.accelerator_s + transfer
        return Estimate(total, self.energy_j(total, body.cpu_s + transfer, body.accelerator_s), body.cpu_s,
                        body.accelerator_s, transfer, streamed, body.switches + (back > 0))

    def time_s(self, placement: Placement | tuple[Target, ...]) -> float:
        return self.estimate(placement).time_s

    def energy_j(self, total_s: float, cpu_busy_s: float, accelerator_busy_s: float) -> float:
        d, a = self.device, self.device.accelerator
        return (d.power_idle_w * total_s + (d.power_max_w - d.power_idle_w) * cpu_busy_s
                + a.power_active_w * accelerator_busy_s + a.power_idle_w * (total_s - accelerator_busy_s))
