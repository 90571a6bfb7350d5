"""`CostModel`: time, memory and energy of work on a device, and of transfers over links.

Roofline first: a piece of work takes the larger of its FLOPs over (peak x efficiency) and its bytes over
memory bandwidth. The efficiency factor is per device; `calibrate` fits it to times measured here.
Learned predictors can replace it behind the same methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgepool.cluster import Cluster, Link
from edgepool.device import Device, PowerMode
from edgepool.profile import ModelProfile

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# Optimizer state per parameter byte: Adam keeps two moments, SGD with momentum one.
OPTIMIZER_STATE = {"adam": 2.0, "adamw": 2.0, "sgd": 0.0, "sgd-momentum": 1.0}


@dataclass(frozen=True)
class CostModel:
    precision: str = "fp32"
    optimizer: str = "adam"
    efficiency: dict[str, float] = field(default_factory=dict)  # device name -> calibrated efficiency
    layer_overhead_s: dict[str, float] = field(default_factory=dict)  # device name -> fixed cost per layer pass
    # device name -> CPU time one point-to-point message costs its sender and its receiver (framework, gloo
    # threads, kernel): a pipeline stage pays it per micro-batch and neighbour, on top of its layers
    message_overhead_s: dict[str, float] = field(default_factory=dict)
    runtime_overhead_bytes: int = 0  # per process: framework, allocator slack (tests and testbed set it)
    # Watts a device draws above idle while its network interface moves data. An assumption, not a
    # measurement: active Gigabit Ethernet or Wi-Fi on a single-board computer adds roughly 0.5-2 W.
    network_power_w: float = 1.0

    def __post_init__(self):
        if self.precision not in PRECISION_BYTES:
            raise ValueError(f"precision = {self.precision!r} is not valid; accepted: {', '.join(PRECISION_BYTES)}")
        if self.optimizer not in OPTIMIZER_STATE:
            raise ValueError(f"optimizer = {self.optimizer!r} is not valid; accepted: {', '.join(OPTIMIZER_STATE)}")

    # ------------------------------------------------------------------ compute
    def efficiency_of(self, device: Device) -> float:
        return self.efficiency.get(device.name, device.efficiency)

    def effective_flops(self, device: Device, precision: str | None = None, mode: PowerMode | None = None) -> float:
        """FLOP/s this device sustains on DL kernels at a precision and power mode."""
        scale = mode.compute_scale if mode else 1.0
        return device.peak(precision or self.precision) * self.efficiency_of(device) * scale

    def compute_time(self, flops: float, bytes_moved: float, device: Device, precision: str | None = None,
                     mode: PowerMode | None = None) -> float:
        bandwidth = device.memory_bandwidth
        if mode and mode.memory_max_freq_mhz and device.power_modes:
            top = max((m.memory_max_freq_mhz or 0) for m in device.power_modes) or mode.memory_max_freq_mhz
            bandwidth *= mode.memory_max_freq_mhz / top
        return max(flops / self.effective_flops(device, precision, mode), bytes_moved / bandwidth)

    def _byte_scale(self) -> float:
        return PRECISION_BYTES[self.precision] / 4

    def layers_time(self, profile: ModelProfile, start: int, end: int, device: Device, batch: float,
                    phase: str = "fwd", mode: PowerMode | None = None) -> float:
        """Time of layers [start, end) for `batch` samples; phase is fwd, bwd or fwdbwd."""
        if phase not in ("fwd", "bwd", "fwdbwd"):
            raise ValueError(f"phase = {phase!r} is not valid; accepted: fwd, bwd, fwdbwd")
        if batch <= 0 or end <= start:
            return 0.0
        scale = batch / profile.batch
        passes = 2 if phase == "fwdbwd" else 1
        total = self.layer_overhead_s.get(device.name, 0.0) * (end - start) * passes
        for layer in profile.layers[start:end]:
            act = (layer.input_bytes + layer.output_bytes) * scale * self._byte_scale()
            weights = layer.param_bytes * self._byte_scale()
            if phase in ("fwd", "fwdbwd"):
                total += self.compute_time(layer.fwd_flops * scale, weights + act, device, mode=mode)
            if phase in ("bwd", "fwdbwd"):
                # read weights, write their gradients, read saved activations, write input gradients
                moved = 2 * weights + act + layer.saved_bytes * scale * self._byte_scale()
                total += self.compute_time(layer.bwd_flops * scale, moved, device, mode=mode)
        return total

    # ------------------------------------------------------------------ memory
    def weights_bytes(self, profile: ModelProfile, start: int, end: int) -> float:
        return profile.slice_sum("param_bytes", start, end) * self._byte_scale()

    def training_memory(self, profile: ModelProfile, start: int, end: int, microbatch: float,
                        in_flight: int = 1) -> float:
        """Weights + gradients + optimizer state + activations of `in_flight` micro-batches (1F1B keeps up to
        the number of stages after this one in flight) + one input and one output buffer."""
        weights = self.weights_bytes(profile, start, end)
        scale = microbatch / profile.batch * self._byte_scale()
        saved = profile.slice_sum("saved_bytes", start, end) * scale
        io = 0.0
        if end > start:
            io = (profile.layers[start].input_bytes + profile.layers[end - 1].output_bytes) * scale
        optimizer = profile.slice_sum("param_bytes", start, end) * OPTIMIZER_STATE[self.optimizer]  # fp32 state
        return weights * 2 + optimizer + saved * max(in_flight, 1) + io + self.runtime_overhead_bytes

    def inference_memory(self, profile: ModelProfile, start: int, end: int, batch: float) -> float:
        """Weights + the two largest activations alive at once."""
        scale = batch / profile.batch * self._byte_scale()
        biggest = sorted((l.output_bytes for l in profile.layers[start:end]), reverse=True)[:2]
        return self.weights_bytes(profile, start, end) + sum(biggest) * scale + self.runtime_overhead_bytes

    # ------------------------------------------------------------------ communication
    @staticmethod
    def transfer_time(nbytes: float, link: Link, sharing: int = 1, medium_capacity: float | None = None) -> float:
        """Latency + bytes over the link's bandwidth; on a shared medium, `sharing` transfers split its capacity."""
        if nbytes <= 0:
            return 0.0
        bandwidth = link.bandwidth
        if medium_capacity is not None:
            bandwidth = min(bandwidth, medium_capacity)
        return link.latency_s + nbytes / (bandwidth / max(sharing, 1))

    @staticmethod
    def allreduce_time(nbytes: float, participants: int, link: Link) -> float:
        """Ring all-reduce: 2(n-1)/n of the data over the slowest link, 2(n-1) latency steps."""
        n = participants
        if n <= 1 or nbytes <= 0:
            return 0.0
        return 2 * (n - 1) * link.latency_s + 2 * (n - 1) / n * nbytes / link.bandwidth

    # ------------------------------------------------------------------ energy
    @staticmethod
    def power(device: Device, utilization: float, mode: PowerMode | None = None) -> float:
        """Watts: idle power plus a dynamic part linear in utilization, up to the mode's modelled draw while
        busy where a power model gave one, else up to the device's maximum capped by the mode's budget."""
        if mode and mode.busy_w:
            top = mode.busy_w
        else:
            top = min(device.power_max_w, mode.power_budget_w) if mode else device.power_max_w
        return device.power_idle_w + (top - device.power_idle_w) * min(max(utilization, 0.0), 1.0)

    def energy(self, device: Device, busy_s: float, idle_s: float = 0.0, mode: PowerMode | None = None,
               network_s: float = 0.0) -> float:
        """Joules (modelled: busy time at full dynamic power, idle time at idle power, plus the network
        interface's extra draw for the `network_s` it moves data, overlapping either)."""
        return busy_s * self.power(device, 1.0, mode) + idle_s * device.power_idle_w + network_s * self.network_power_w

    # ------------------------------------------------------------------ calibration
    def calibrate(self, profiles: ModelProfile | list[ModelProfile], device: Device) -> "CostModel":
        """Fit `device`'s efficiency and per-layer overhead to measured layer times.

        Least squares of measured = overhead + ideal / efficiency over every measured layer pass, where
        `ideal` is the roofline time at efficiency 1: small layers expose the fixed overhead, large ones the
        attainable fraction of peak.
        """
        profiles = profiles if isinstance(profiles, list) else [profiles]
        base = replace(self, efficiency={**self.efficiency, device.name: 1.0},
                       layer_overhead_s={**self.layer_overhead_s, device.name: 0.0})
        ideal, measured = [], []
        for prof in profiles:
            for i, layer in enumerate(prof.layers):
                for phase, t in (("fwd", layer.fwd_time_s), ("bwd", layer.bwd_time_s)):
                    if t is not None:
                        ideal.append(base.layers_time(prof, i, i + 1, device, prof.batch, phase))
                        measured.append(t)
        if len(measured) < 2:
            raise ValueError("calibrate needs profiles measured with measure=True")
        n = len(ideal)
        mean_x, mean_y = sum(ideal) / n, sum(measured) / n
        var = sum((x - mean_x) ** 2 for x in ideal)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(ideal, measured)) / var if var else 0.0
        overhead = mean_y - slope * mean_x
        if slope <= 0 or overhead < 0:  # degenerate fit: fall back to a pure ratio, no overhead
            slope, overhead = sum(measured) / max(sum(ideal), 1e-12), 0.0
        efficiency = min(max(1.0 / slope, 1e-4), 1.0)
        return replace(self, efficiency={**self.efficiency, device.name: efficiency},
                       layer_overhead_s={**self.layer_overhead_s, device.name: overhead})


def device_speed(cluster: Cluster, name: str, cost_model: CostModel | None = None, *,
                 peak_only: bool = False) -> float:
    """FLOP/s a cluster device sustains in the power mode the cluster sets: its peak at the cost model's
    precision x its efficiency x the mode's compute scale (`CostModel.effective_flops`). Planners rank and
    split devices by it; the testbed sizes CPU quotas by it (no cost model: fp32, the device's own efficiency).
    `peak_only`: the datasheet peak alone, as collaborative PAC splits its data (efficiency and mode ignored)."""
    cost_model = cost_model or CostModel()
    device = cluster.devices[name]
    if peak_only:
        return device.peak(cost_model.precision)
    return cost_model.effective_flops(device, mode=device.mode(cluster.power_modes.get(name)))
