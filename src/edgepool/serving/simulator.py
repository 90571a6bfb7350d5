"""Simulator: the real scheduler and block manager, with a roofline cost model in place of the model.

Policies can then be compared at edge-GPU scale (Jetson AGX Orin, a 7B model) in seconds. Only the
executor is swapped: step times come from a roofline (compute vs memory traffic of weights and KV cache)
and swap copies from the host-pool bandwidth. This module never imports the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.catalog import get_device
from edgepool.costmodel import CostModel
from edgepool.device import Device
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.metrics import summarize
from edgepool.serving.request import Request, RequestState
from edgepool.serving.scheduler import LengthEstimator, RequestRejected, Scheduler, make_policy
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


def trace_to_requests(trace: list[TraceRequest], prefix: str = "r") -> list[Request]:
    return [Request(request_id=f"{prefix}{i}", prompt_len=t.prompt_len, max_new_tokens=t.max_new_tokens,
                    stop_after=t.response_len, arrival_time=t.arrival_s, prompt_text=t.prompt)
            for i, t in enumerate(trace)]


def simulate(trace: list[TraceRequest], policy: str, config: SimConfig | None = None,
             predictor: LengthEstimator | None = None, check_blocks: bool = False) -> dict:
    """Serve `trace` with `policy` on the simulated device; returns `summarize()` metrics (simulated)."""
    config = config or SimConfig()
    device = get_device(config.device)
    num_blocks, host_blocks = config.blocks()
    cost = RooflineStepCost(device, config.model, config.block_size, power_mode=config.power_mode)
    pol = make_policy(policy, **config.policy_options)
    blocks = BlockManager(num_blocks, config.block_size, host_blocks)
    scheduler = Scheduler(pol, blocks, max_batch_requests=config.max_batch_requests,
                          max_batch_tokens=config.max_batch_tokens, cost=cost,
                          predictor=predictor if pol.uses_predictor else None)
    # The true length is only a stop condition (`stop_after`, standing in for EOS); policies see predictions.
    requests = trace_to_requests(trace)
    if pol.uses_predictor and predictor is not None and requests:
        predictor.predict(requests)      # from the prompt only; batched for speed, same as one at a time
    admitted: list[Request] = []
    refused = 0
    clock, i = 0.0, 0
    while i < len(requests) or scheduler.has_work():
        while i < len(requests) and requests[i].arrival_time <= clock:
            request = requests[i]
            i += 1
            try:
                scheduler.add(request)
                admitted.append(request)
            except RequestRejected as rejected:
                request.state, request.error = RequestState.FAILED, rejected.message
                refused += 1
        if not scheduler.has_work():
            if i >= len(requests):
                break
            clock = requests[i].arrival_time
            continue
        plan = scheduler.schedule(clock)
        if not plan.batch:
            if i < len(requests):
                clock = max(clock, requests[i].arrival_time)
                continue
            for stuck in scheduler.live_requests():      # cannot happen with validated sizes; never silent
                scheduler.abort(stuck, "could not be scheduled: KV cache too small")
            break
        clock += cost.step_time(plan.compute_tokens, len(plan.batch), plan.context_tokens)
        clock += cost.copy_time(len(plan.swap_out) + len(plan.swap_in))
        scheduler.complete(plan, None, clock)
        if check_blocks:
            blocks.check({r.request_id for r in scheduler.live_requests()})
    first_arrival = requests[0].arrival_time if requests else 0.0
    result = summarize(admitted, refused, scheduler.stats.as_dict(), clock - first_arrival)
    result.update(pol.describe())
    result["source"] = "simulated"
    result["where"] = f"roofline model of {device.name} serving {config.model.name} ({num_blocks} KV blocks of " \
                      f"{config.block_size} tokens, {host_blocks} host blocks)"
    return result
