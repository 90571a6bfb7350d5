"""`Device`: what one machine can do, from the built-in catalog, explicit numbers, or measured here."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
Precision = Literal["fp32", "fp16", "bf16", "int8"]


class PowerMode(BaseModel):
    """A vendor-defined power mode (e.g. an `nvpmodel` preset): a budget and the caps it sets."""

    model_config = ConfigDict(extra="forbid")

    name: str
    power_budget_w: float = Field(gt=0)
    cpu_cores_online: int | None = Field(default=None, gt=0)
    cpu_max_freq_mhz: float | None = Field(default=None, gt=0)
    gpu_max_freq_mhz: float | None = Field(default=None, gt=0)
    memory_max_freq_mhz: float | None = Field(default=None, gt=0)
    # Fraction of the device's peak compute this mode allows, when the vendor's clocks say so.
    compute_scale: float = Field(default=1.0, gt=0, le=1.0)
    # Modelled draw while busy with the work being planned, where a power model gave one
    # (`edgepool.power.planning_modes`); else the device's maximum, capped by the budget, stands for it.
    busy_w: float | None = Field(default=None, gt=0)


class Accelerator(BaseModel):
    """A low-precision accelerator a device carries (an NPU, a TPU, a DSP, a small GPU) and the link to it.

    It computes only in the precisions of `peak_flops`; weights beyond `memory_bytes` cross the link on
    every inference (the Coral Edge TPU streams off-chip parameters over USB this way)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["npu", "tpu", "dsp", "gpu"] = "npu"
    description: str = ""
    peak_flops: dict[str, float]  # precision -> op/s, dense
    memory_bytes: int = Field(gt=0, description="memory for weights on or beside the accelerator")
    power_active_w: float = Field(gt=0)
    power_idle_w: float = Field(default=0.0, ge=0)
    link_bandwidth: float = Field(gt=0, description="bytes/s between the CPU's memory and the accelerator")
    link_latency_s: float = Field(ge=0, description="fixed cost of one hand-over between CPU and accelerator")
    efficiency: float = Field(default=0.4, gt=0, le=1.0)
    sources: dict[str, str] = Field(default_factory=dict)

    @field_validator("peak_flops")
    @classmethod
    def _known_precisions(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(PRECISIONS))
        if unknown or not value:
            raise ValueError(f"unknown precision(s) {unknown or '(none given)'}; accepted: {', '.join(PRECISIONS)}")
        if any(v <= 0 for v in value.values()):
            raise ValueError("every peak_flops value must be > 0 (op/s)")
        return value

    @property
    def precisions(self) -> list[str]:
        """What it computes in, fastest first."""
        return sorted(self.peak_flops, key=lambda p: -self.peak_flops[p])


class Device(BaseModel):
    """Capabilities of one device. Throughput in FLOP/s (int8: op/s), memory and bandwidth in bytes."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["gpu", "cpu", "soc", "npu"] = "cpu"
    description: str = ""
    peak_flops: dict[str, float]
    memory_bytes: int = Field(gt=0)
    memory_bandwidth: float = Field(gt=0, description="bytes/s")
    cpu_cores: int = Field(gt=0)
    power_idle_w: float = Field(default=1.0, ge=0)
    power_max_w: float = Field(default=10.0, gt=0)
    power_modes: list[PowerMode] = Field(default_factory=list)
    # Fraction of peak that deep-learning kernels reach on this device; the cost model calibrates it.
    efficiency: float = Field(default=0.4, gt=0, le=1.0)
    sources: dict[str, str] = Field(default_factory=dict)
    measured: bool = False
    # fp32 FLOP/s of the CPU cores where `peak_flops` describes a GPU or a whole SoC; None: the device is its CPU
    cpu_peak_flops: float | None = Field(default=None, gt=0)
    accelerator: Accelerator | None = None

    @field_validator("peak_flops")
    @classmethod
    def _known_precisions(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(PRECISIONS))
        if unknown:
            raise ValueError(f"unknown precision(s) {unknown}; accepted: {', '.join(PRECISIONS)}")
        if "fp32" not in value:
            raise ValueError("peak_flops needs at least 'fp32'")
        if any(v <= 0 for v in value.values()):
            raise ValueError("every peak_flops value must be > 0 (FLOP/s)")
        return value

    @model_validator(mode="after")
    def _power_range(self) -> "Device":
        if self.power_max_w < self.power_idle_w:
            raise ValueError(f"power_max_w ({self.power_max_w}) is below power_idle_w ({self.power_idle_w})")
        return self

    def peak(self, precision: str = "fp32") -> float:
        """Peak FLOP/s at a precision; a precision without hardware support runs at the fp32 rate."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision = {precision!r} is not valid; accepted: {', '.join(PRECISIONS)}")
        if precision == "bf16" and "bf16" not in self.peak_flops:
            precision = "fp16"
        return self.peak_flops.get(precision, self.peak_flops["fp32"])

    def cpu_peak(self) -> float:
        """fp32 FLOP/s of the CPU cores (precision placement runs the CPU side in fp32)."""
        return self.cpu_peak_flops or self.peak_flops["fp32"]

    def mode(self, name: str | None) -> PowerMode | None:
        """The named power mode, or None for the device's default (maximum) mode."""
        if name is None:
            return None
        for mode in self.power_modes:
            if mode.name == name:
                return mode
        accepted = ", ".join(m.name for m in self.power_modes) or "(this device defines no power modes)"
        raise ValueError(f"power mode = {name!r} is not valid for {self.name}; accepted: {accepted}")
