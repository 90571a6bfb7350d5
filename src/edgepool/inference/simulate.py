"""Simulated latency and memory of an inference `Plan` from the cost model: a `Report(source="simulated")`.

Per stage, per layer: each member computes its share of the layer (roofline `CostModel.compute_time` on its
share of the FLOPs and weights), plus the CPU work its messages cost (`CommCosts`: measured on the launcher
by `runtime.probes.comm`, in CPU seconds of the probed core, scaled to the member's speed). Communication:
- `tensor` (Megatron-style): two ring all-reduces of the whole hidden state per layer, over the slowest link,
  each with the measured fixed wall time of an all-reduce among that many devices;
- `tensor+sequence` (Galaxy): two all-gathers and two reduce-scatters per layer, sent pair-wise (see
  `collectives`): a phase lasts as long as its slowest pair transfer plus the measured fixed time of a phase.
Transfers are priced by `edgepool.network`, as training's are: a shared medium (Wi-Fi) splits its capacity
among the all-reduce's senders and carries all of a phase's pair transfers through it together.
  With `tiles` > 1, communication and computation overlap: a layer takes max(compute, comm) +
  min(compute, comm) / tiles; each tile costs every message again (CPU). Receives stay posted through the
  whole layer, and a process burns `CommCosts.p2p_wait_cpu_fraction` of a probed core while they are: a
  member's compute is stretched by (1 + that fraction in its own speed), which hurts slow devices most.
Between stages: one transfer of the hidden state between leaders (plus the measured one-message latency),
plus the scatter/broadcast inside the next stage. Embedding and head run on the stage leader. A decode step is
the same with one new token, plus reading the KV cache of `context` tokens for attention.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.inference.collectives import split_counts
from edgepool.runtime.probes.comm import CommCosts
from edgepool.network import LinkCache, allreduce_link, transfers_time
from edgepool.plan import Plan, StagePlan
from edgepool.profile import ModelProfile
from edgepool.report import DeviceStats, Report, TimelineEvent

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class RequestShape:
    """batch x seq new tokens; for `decode`, seq is 1 and `context` tokens are already cached."""

    batch: int = 1
    seq: int = 128
    phase: str = "prefill"
    context: int = 0

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"phase = {self.phase!r} is not valid; accepted: {', '.join(PHASES)}")


def row_bytes(profile: ModelProfile, batch: int) -> float:
    """Bytes of one sequence position's hidden state for `batch` requests (fp32)."""
    layer = profile.layers[1] if len(profile.layers) > 2 else profile.layers[0]
    return layer.output_bytes / (profile.seq or 1) / profile.batch * batch


def layer_time(cost: CostModel, profile: ModelProfile, index: int, device, share: float, shape: RequestShape) -> float:
    """One block's time on `device` for a `share` of its heads/columns (and all of its rows)."""
    layer = profile.layers[index]
    scale = shape.batch / profile.batch
    flops = layer.fwd_flops * scale * share
    moved = layer.param_bytes * share + (layer.input_bytes + layer.output_bytes) * scale
    if shape.phase == "decode" and 0 < index < len(profile.layers) - 1:
        rb = row_bytes(profile, shape.batch)
        flops += 4 * shape.context * rb / 4 * share  # q.k and p.v over the cached tokens
        moved += 2 * shape.context * rb * share  # reading the cached keys and values
    return cost.compute_time(flops, moved, device)


def stage_memory(cost: CostModel, profile: ModelProfile, stage: StagePlan, num_blocks: int,
                 shape: RequestShape) -> dict[str, float]:
    """Bytes each member holds: its share of the layers' weights, embedding/head where it runs them, activations."""
    lo, hi = stage.layers
    out = {}
    rb = row_bytes(profile, shape.batch)
    seq_total = shape.seq + shape.context
    for i, (dev, share) in enumerate(zip(stage.devices, stage.shares)):
        weights = 0.0
        for b in range(lo, hi):
            p = profile.layers[b].param_bytes
            if b == 0:
                weights += p  # every first-stage member embeds the input itself
            elif b == num_blocks - 1:
                weights += p if i == 0 else 0.0
            else:
                weights += p * share
        layers = sum(1 for b in range(lo, hi) if 0 < b < num_blocks - 1)
        kv = 2 * seq_total * rb * share * layers
        activations = 6 * shape.seq * rb
        out[dev] = weights + kv + activations + cost.runtime_overhead_bytes
    return out


def _pair_phase(links: LinkCache, sizes: dict[tuple[str, str], float]) -> float:
    """Time of a set of pair-wise transfers posted at once (`network.transfers_time`: the slowest pair, or a
    shared medium carrying them all)."""
    return transfers_time([(src, dst, nbytes) for (src, dst), nbytes in sizes.items()], links,
                          one_at_a_time=False)[0]


def _cpu_scale(cost: CostModel, comm: CommCosts, device) -> float:
    return comm.cpu_scale(cost.effective_flops(device))


def stage_times(plan: Plan, stage_index: int, profile: ModelProfile, cluster: Cluster, cost: CostModel,
                shape: RequestShape, tiles: int, comm: CommCosts | None = None,
                links: LinkCache | None = None) -> dict[str, float]:
    """compute_s, comm_s and total_s of one stage (without the hand-off from the previous stage); `links`: the
    caller's cache when it prices several stages of one cluster."""
    comm = comm or CommCosts()
    links = links or LinkCache(cluster)
    stage = plan.stages[stage_index]
    devices = [cluster.devices[d] for d in stage.devices]
    num_blocks = len(profile.layers)
    lo, hi = stage.layers
    leader = devices[0]
    extra = 0.0  # embedding and head, on the leader
    compute = comm_total = total = 0.0
    rb = row_bytes(profile, shape.batch)
    n = len(devices)
    parallel = "single" if n == 1 else stage.parallel
    scales = [_cpu_scale(cost, comm, d) for d in devices]
    overhead = [0.0] * n  # per member and layer: device seconds of message handling
    slowdown = [1.0] * n  # per member: compute stretched by the CPU its outstanding receives burn
    if parallel == "tensor+sequence":
        rows = dict(zip(stage.devices, split_counts(shape.seq, list(stage.shares))))
        gather = {(a, b): rows[a] * rb for a in stage.devices for b in stage.devices if a != b and rows[a]}
        scatter = {(a, b): rows[b] * rb for a in stage.devices for b in stage.devices if a != b and rows[b]}
        per_layer_comm = 2 * (_pair_phase(links, gather) + _pair_phase(links, scatter) + 2 * comm.p2p_phase_s)
        for i, d in enumerate(stage.devices):
            messages = 2 * 4 * tiles * (n - 1)  # (all-gather + reduce-scatter) x (send + receive), twice a layer
            moved = 2 * 2 * ((n - 1) * rows[d] + (shape.seq - rows[d])) * rb
            overhead[i] = (messages * comm.p2p_message_cpu_s + moved * comm.p2p_byte_cpu_s) * scales[i]
            slowdown[i] = 1.0 + comm.p2p_wait_cpu_fraction * scales[i]
    elif parallel == "tensor":
        nbytes = shape.seq * rb
        cpu = 2 * nbytes * comm.allreduce_cpu_per_byte_s  # two all-reduces a layer
        per_layer_comm = 2 * (CostModel.allreduce_time(nbytes, n, allreduce_link(stage.devices, links)[0])
                              + comm.allreduce_fixed_s(n))
        overhead = [cpu * sc for sc in scales]
    else:
        per_layer_comm = 0.0
    for b in range(lo, hi):
        if b == 0 or b == num_blocks - 1:
            extra += layer_time(cost, profile, b, leader, 1.0, shape)
            continue
        c = max((layer_time(cost, profile, b, d, s, shape) + o) * w
                for d, s, o, w in zip(devices, stage.shares, overhead, slowdown))
        compute += c
        comm_total += per_layer_comm
        if parallel == "tensor+sequence" and tiles > 1:
            total += max(c, per_layer_comm) + min(c, per_layer_comm) / tiles
        else:
            total += c + per_layer_comm
    if parallel == "tensor+sequence":  # rows in from the leader (unless embedded here) and back to it
        sizes = {(stage.devices[0], d): r * rb for d, r in zip(stage.devices, split_counts(shape.seq, list(stage.shares)))
                 if d != stage.devices[0] and r}
        hand = _pair_phase(links, sizes) + comm.hop_s
        comm_total += hand * (1 if lo == 0 else 2)
        total += hand * (1 if lo == 0 else 2)
    elif parallel == "tensor" and lo > 0:
        hand = _pair_phase(links, {(stage.devices[0], d): shape.seq * rb for d in stage.devices[1:]}) + comm.hop_s
        comm_total += hand
        total += hand
    return {"compute_s": compute + extra, "comm_s": comm_total, "total_s": total + extra}


def simulate_inference(plan: Plan, profile: ModelProfile, cluster: Cluster, cost: CostModel | None = None,
                       shape: RequestShape | None = None, tiles: int | None = None,
                       comm: CommCosts | None = None) -> Report:
    """Latency (one request) of `plan`; `shape` defaults to the request the plan was made for; `comm`: the
    collectives' costs measured where the plan will run (default: `CommCosts()`)."""
    cost = cost or CostModel()
    comm = comm or CommCosts()
    if shape is None:  # the request the planner planned for, as it noted it
        notes = plan.notes
        shape = RequestShape(batch=plan.batch, seq=int(notes.get("new_tokens", plan.seq or profile.seq or 1)),
                             phase=notes.get("phase", "prefill"), context=int(notes.get("context", 0)))
    tiles = tiles or int(plan.notes.get("tiles", 1))
    where = "edgepool inference simulator (roofline cost model; link latency and bandwidth from the cluster spec)"
    if not plan.feasible:
        return Report(source="simulated", where=where, planner=plan.planner, model=plan.model, cluster=plan.cluster,
                      feasible=False, infeasible_reason=plan.infeasible_reason)
    rb = row_bytes(profile, shape.batch)
    links = LinkCache(cluster)
    clock = 0.0
    timeline: list[TimelineEvent] = []
    per_device: dict[str, DeviceStats] = {}
    stages_out = []
    for s, stage in enumerate(plan.stages):
        if s > 0:
            hop = _pair_phase(links, {(plan.stages[s - 1].devices[0], stage.devices[0]): shape.seq * rb}) + comm.hop_s
            timeline.append(TimelineEvent(device=stage.devices[0], kind="recv", start=clock, end=clock + hop, stage=s))
            clock += hop
        times = stage_times(plan, s, profile, cluster, cost, shape, tiles, comm, links)
        for d in stage.devices:
            timeline.append(TimelineEvent(device=d, kind="fwd", start=clock, end=clock + times["total_s"], stage=s))
        clock += times["total_s"]
        stages_out.append(times)
        for dev, mem in stage_memory(cost, profile, stage, len(profile.layers), shape).items():
            limit = cluster.devices[dev].memory_bytes
            per_device[dev] = DeviceStats(busy_s=times["total_s"], peak_memory_bytes=mem, memory_limit_bytes=limit)
    if shape.phase == "decode" and len(plan.stages) > 1:  # the token goes back to the first device
        clock += cluster.link(plan.stages[-1].devices[0], plan.stages[0].devices[0]).latency_s + comm.hop_s
    for dev, stats in per_device.items():
        stats.utilization = stats.busy_s / clock if clock else 0.0
        stats.energy_j = cost.energy(cluster.devices[dev], stats.busy_s, clock - stats.busy_s)
    over = {d: s.peak_memory_bytes for d, s in per_device.items() if s.peak_memory_bytes > (s.memory_limit_bytes or 1e30)}
    feasible = not over
    return Report(source="simulated", where=where, planner=plan.planner, model=plan.model, cluster=plan.cluster,
                  feasible=feasible,
                  infeasible_reason=None if feasible else f"memory exceeded on {', '.join(sorted(over))}",
                  latency_s=clock, throughput=shape.batch / clock if clock else None, per_device=per_device,
                  timeline=timeline, metrics={"stages": stages_out, "tiles": tiles, "phase": shape.phase,
                                              "seq": shape.seq, "context": shape.context,
                                              "energy": "modelled", "comm_costs": comm.source})
