"""Simulator: the real scheduler and block manager, with a roofline cost model in place of the model.

Policies can then be compared at edge-GPU scale (Jetson AGX Orin, a 7B model) in seconds. Only the
executor is swapped (`replay.ModelledExecutor`, in the trace-replay loop the engine uses too): step times
come from a roofline (compute vs memory traffic of weights and KV cache) and swap copies from the host-pool
bandwidth. This module never imports the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.catalog import get_device
from edgepool.costmodel import CostModel
from edgepool.device import Device
from edgepool.report import Report
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.policies import make_policy
from edgepool.serving.replay import ModelledExecutor, replay, trace_requests
from edgepool.serving.scheduler import LengthEstimator, Scheduler
from edgepool.serving.traces import TraceRequest

GIB = 2 ** 30


@dataclass(frozen=True)
class ModelShape:
    """What the cost of a decoder step depends on."""

    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    bytes_per_value: int = 2          # fp16

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_value


# Llama-2-7B: 6.74 B parameters, 32 layers, hidden 4096, 32 KV heads of 128 (Touvron et al. 2023, Table 1/2).
LLAMA2_7B = ModelShape("llama-2-7b", 6.74e9, 32, 4096, 32, 128)


@dataclass
class RooflineStepCost:
    """Step time = `CostModel.compute_time` roofline (FLOPs vs bytes, optional power mode) + a per-step overhead.

    FLOPs: 2 * params per processed token plus attention (4 * layers * hidden * context per token).
    Bytes: all weights once per step plus the K/V of every context token read once.
    Swap copies move blocks between the device KV region and the host pool at `host_bandwidth`.
    """

    device: Device
    model: ModelShape
    block_size: int = 16
    precision: str = "fp16"
    memory_efficiency: float = 0.7     # fraction of nominal DRAM bandwidth streaming kernels reach (assumption)
    host_bandwidth: float | None = None
    step_overhead_s: float = 0.002     # scheduling + kernel launches per step (assumption)

    power_mode: str | None = None

    def __post_init__(self) -> None:
        self.cost_model = CostModel(precision=self.precision)
        self.mode = self.device.mode(self.power_mode)
        if self.host_bandwidth is None:
            # Unified memory (Jetson): a swap reads and writes the same LPDDR5, at the kernel efficiency.
            self.host_bandwidth = self.device.memory_bandwidth * self.device.efficiency / 2

    def step_time(self, compute_tokens: int, num_requests: int, context_tokens: int) -> float:
        if compute_tokens <= 0:
            return 0.0
        mean_context = context_tokens / max(num_requests, 1)
        attention = 4 * self.model.layers * self.model.hidden * compute_tokens * mean_context
        flops = 2 * self.model.params * compute_tokens + attention
        traffic = self.model.weight_bytes + self.model.kv_bytes_per_token * context_tokens
        # The shared roofline; streaming reaches `memory_efficiency` of nominal bandwidth, hence the scaling.
        roofline = self.cost_model.compute_time(flops, traffic / self.memory_efficiency, self.device,
                                                self.precision, self.mode)
        return roofline + self.step_overhead_s

    def copy_time(self, num_blocks: int) -> float:
        return num_blocks * self.block_size * self.model.kv_bytes_per_token / self.host_bandwidth


@dataclass
class SimConfig:
    device: str = "jetson-agx-orin"
    model: ModelShape = LLAMA2_7B
    kv_cache_bytes: float = 4 * GIB
    host_pool_bytes: float = 8 * GIB
    block_size: int = 16
    power_mode: str | None = None
    max_batch_requests: int = 256
    max_batch_tokens: int = 2048
    policy_options: dict = field(default_factory=dict)

    def blocks(self) -> tuple[int, int]:
        per_block = self.block_size * self.model.kv_bytes_per_token
        return int(self.kv_cache_bytes // per_block), int(self.host_pool_bytes // per_block)


def simulate(trace: list[TraceRequest], policy: str, config: SimConfig | None = None,
             predictor: LengthEstimator | None = None, check_blocks: bool = False) -> Report:
    """Serve `trace` with `policy` on the simulated device: a simulated `Report` with `summarize()` metrics."""
    config = config or SimConfig()
    device = get_device(config.device)
    num_blocks, host_blocks = config.blocks()
    cost = RooflineStepCost(device, config.model, config.block_size, power_mode=config.power_mode)
    pol = make_policy(policy, **config.policy_options)
    scheduler = Scheduler(pol, BlockManager(num_blocks, config.block_size, host_blocks),
                          max_batch_requests=config.max_batch_requests, max_batch_tokens=config.max_batch_tokens,
                          cost=cost, predictor=predictor if pol.uses_predictor else None)
    # The true length is only a stop condition (`stop_after`, standing in for EOS); policies see predictions.
    result = replay(trace_requests(trace, "r"), scheduler, ModelledExecutor(cost), check_blocks=check_blocks)
    where = f"roofline model of {device.name} serving {config.model.name} ({num_blocks} KV blocks of " \
            f"{config.block_size} tokens, {host_blocks} host blocks)"
    return result.report(source="simulated", where=where, device=device.name, model=config.model.name,
                         extra=pol.describe())
