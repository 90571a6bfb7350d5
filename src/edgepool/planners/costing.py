"""Shared pipeline costs: one stage, one boundary transfer, one all-reduce, and a whole plan's estimate.

Every planner's `Plan.predicted` comes from `estimate`, and the simulator replays a plan with the same
per-operation functions (`stage_op_times`, `boundary_transfer`, `group_allreduce`, ...), so the planner's
prediction and the simulator's replay differ only by how the schedule is composed (closed form vs. events).

Semantics (as documented in `edgepool.plan`): a pipeline processes `batch * batch_share` samples per
iteration in `microbatches` micro-batches; inside a stage each device takes `share` of every micro-batch
(data parallel) and the stage's gradients are all-reduced across its group once per iteration; with several
pipelines, gradients are also all-reduced across pipelines.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.cluster import Cluster
from edgepool.costmodel import OPTIMIZER_STATE, PRECISION_BYTES, CostModel
from edgepool.network import LinkCache, allreduce_link, transfers_time
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.profile import ModelProfile
from edgepool.schedule import get_schedule, stage_in_flight

# Adam-like update: about 10 FLOPs per parameter (moments, bias correction, update).
OPTIMIZER_FLOPS_PER_PARAM = 10.0


def byte_scale(cost_model: CostModel) -> float:
    """Bytes of an activation/weight in the training precision over the profile's fp32 bytes."""
    return PRECISION_BYTES[cost_model.precision] / 4


def device_mode(cluster: Cluster, name: str):
    """The power mode the cluster spec sets for a device (None: the device's maximum)."""
    return cluster.devices[name].mode(cluster.power_modes.get(name))


def microbatch_size(plan: Plan, pipe: PipelinePlan) -> float:
    return plan.batch * pipe.batch_share / plan.microbatches


def activation_bytes(profile: ModelProfile, end: int, microbatch: float, cost_model: CostModel) -> float:
    """Bytes crossing the cut after layer `end - 1` for one micro-batch (same size forward and backward)."""
    return profile.layers[end - 1].output_bytes * microbatch / profile.batch * byte_scale(cost_model)


def gradient_bytes(profile: ModelProfile, start: int, end: int, cost_model: CostModel) -> float:
    return cost_model.weights_bytes(profile, start, end)


def optimizer_time(cost_model: CostModel, profile: ModelProfile, start: int, end: int, device, mode=None) -> float:
    """One optimizer step over layers [start, end): read weights, gradients and state, write weights and state."""
    param_bytes = profile.slice_sum("param_bytes", start, end)
    if param_bytes <= 0:
        return 0.0
    nparams = param_bytes / profile.dtype_bytes
    moved = param_bytes * (3 * byte_scale(cost_model) + 2 * OPTIMIZER_STATE[cost_model.optimizer])
    return cost_model.compute_time(OPTIMIZER_FLOPS_PER_PARAM * nparams, moved, device, mode=mode)


def proportional_shares(profile: ModelProfile, cost_model: CostModel, cluster: Cluster, devices: list[str],
                        start: int, end: int, microbatch: float, rounds: int = 4) -> list[float]:
    """Shares of a micro-batch in proportion to each device's speed on layers [start, end), so that the
    group's devices finish together. Fixed point: a device's rate is measured at its current share."""
    n = len(devices)
    shares = [1.0 / n] * n
    if n == 1:
        return shares
    for _ in range(rounds):
        rates = []
        for name, share in zip(devices, shares):
            x = max(share * microbatch, 1e-3)
            t = cost_model.layers_time(profile, start, end, cluster.devices[name], x, "fwdbwd",
                                       mode=device_mode(cluster, name))
            rates.append(x / t if t > 0 else 1e30)
        total = sum(rates)
        shares = [r / total for r in rates]
    return normalize_shares(shares)


def normalize_shares(shares: list[float]) -> list[float]:
    total = sum(shares)
    out = [round(s / total, 9) for s in shares]
    out[-1] = round(1.0 - sum(out[:-1]), 9)
    return out


# ----------------------------------------------------------------------------- per-operation costs
@dataclass
class StageOps:
    """Per-device times of one micro-batch's forward and backward on a stage, plus per-iteration work."""

    fwd: dict[str, float]
    bwd: dict[str, float]
    optimizer: dict[str, float]
    allreduce_s: float
    allreduce_medium: str | None
    grad_bytes: float

    @property
    def fwd_s(self) -> float:
        return max(self.fwd.values())

    @property
    def bwd_s(self) -> float:
        return max(self.bwd.values())


def stage_op_times(profile: ModelProfile, cost_model: CostModel, cluster: Cluster, stage: StagePlan,
                   microbatch: float, links: LinkCache | None = None, synced_elsewhere: float = 0.0,
                   neighbours: int = 0) -> StageOps:
    """`synced_elsewhere`: gradient bytes of the stage's shared parameters, all-reduced with the other
    stages that use them (`shared_gradient_syncs`) instead of inside this stage's group. `neighbours`:
    adjacent stages (0-2); each pass receives from one and sends to the other, paying the message overhead."""
    links = links or LinkCache(cluster)
    start, end = stage.layers
    fwd, bwd, opt = {}, {}, {}
    for name, share in zip(stage.devices, stage.shares):
        device, mode = cluster.devices[name], device_mode(cluster, name)
        messages = neighbours * cost_model.message_overhead_s.get(name, 0.0)
        rows = share * microbatch
        fwd[name] = cost_model.layers_time(profile, start, end, device, rows, "fwd", mode=mode) + messages
        bwd[name] = cost_model.layers_time(profile, start, end, device, rows, "bwd", mode=mode) + messages
        opt[name] = optimizer_time(cost_model, profile, start, end, device, mode)
    nbytes = gradient_bytes(profile, start, end, cost_model) - synced_elsewhere
    ar, medium = group_allreduce(stage.devices, nbytes, links)
    return StageOps(fwd, bwd, opt, ar, medium, nbytes)


def group_allreduce(devices: list[str], nbytes: float, links: LinkCache) -> tuple[float, str | None]:
    """Ring all-reduce over the group's slowest link; on a shared medium all n senders split its capacity."""
    n = len(devices)
    if n <= 1 or nbytes <= 0:
        return 0.0, None
    link, medium = allreduce_link(devices, links)
    return CostModel.allreduce_time(nbytes, n, link), medium


def boundary_transfer(senders: list[str], send_shares: list[float], receivers: list[str], recv_shares: list[float],
                      nbytes: float, links: LinkCache) -> tuple[float, str | None]:
    """Move one micro-batch's activations (or their gradients) between two stage groups.

    Samples are laid out contiguously by share on both sides, so sender d sends to receiver e the overlap of
    their sample ranges. Each endpoint moves its pairs one after another (its NIC is the limit); pairs on a
    shared medium also share its capacity. Returns (seconds, medium or None)."""
    if nbytes <= 0:
        return 0.0, None
    pairs = []
    a0 = 0.0
    for d, ws in zip(senders, send_shares):
        a1 = a0 + ws
        b0 = 0.0
        for e, wr in zip(receivers, recv_shares):
            b1 = b0 + wr
            overlap = min(a1, b1) - max(a0, b0)
            if overlap > 1e-12:
                pairs.append((d, e, overlap * nbytes))
            b0 = b1
        a0 = a1
    return transfers_time(pairs, links)


@dataclass
class SharedSync:
    """One all-reduce of shared parameters' gradients among every device of the stages that use them
    (the runtime's bucket for that set of ranks)."""
    stages: list[tuple[int, int]]  # (pipeline, stage)
    first_block: int
    devices: list[str]
    nbytes: float
    seconds: float
    medium: str | None


def shared_gradient_syncs(plan: Plan, profile: ModelProfile, cost_model: CostModel,
                          links: LinkCache) -> list[SharedSync]:
    """Shared parameters (tied embedding and head) whose blocks fall in more than one stage."""
    syncs = []
    for group in profile.shared:
        stages = [(p, s) for p, pipe in enumerate(plan.pipelines) for s, stage in enumerate(pipe.stages)
                  if any(stage.layers[0] <= b < stage.layers[1] for b in group.blocks)]
        if len(stages) < 2:
            continue  # inside one stage: its group's all-reduce covers them
        devices = list(dict.fromkeys(d for p, s in stages for d in plan.pipelines[p].stages[s].devices))
        nbytes = group.param_bytes * byte_scale(cost_model)
        seconds, medium = group_allreduce(devices, nbytes, links)
        syncs.append(SharedSync(stages, min(group.blocks), devices, nbytes, seconds, medium))
    return syncs


def synced_elsewhere(stage: StagePlan, syncs: list[SharedSync]) -> float:
    """Gradient bytes a stage's own all-reduce leaves to `syncs` (the first user's `param_bytes` counts them)."""
    return sum(x.nbytes for x in syncs if stage.layers[0] <= x.first_block < stage.layers[1])


def cross_pipeline_allreduce(plan: Plan, profile: ModelProfile, cost_model: CostModel,
                             links: LinkCache, synced_elsewhere: float = 0.0) -> float:
    """All-reduce of the whole model's gradients among pipelines (one leader per pipeline), over the
    slowest link between pipeline leaders; shared parameters synced by a `SharedSync` are left out."""
    n = len(plan.pipelines)
    if n <= 1:
        return 0.0
    leaders = [p.stages[0].devices[0] for p in plan.pipelines]
    link, _ = allreduce_link(leaders, links)
    return CostModel.allreduce_time(gradient_bytes(profile, 0, len(profile), cost_model) - synced_elsewhere, n,
                                    link)


# ----------------------------------------------------------------------------- a whole plan
@dataclass
class PipelineCost:
    stages: list[StageOps]
    fwd_comm: list[float]  # boundary s -> s+1, per micro-batch
    bwd_comm: list[float]
    comm_media: list[str | None]
    microbatch: float


@dataclass
class Estimate:
    feasible: bool
    reason: str | None
    iteration_time_s: float
    throughput: float
    bottleneck_s: float
    memory: dict[str, float] = field(default_factory=dict)
    memory_limit: dict[str, float] = field(default_factory=dict)

    @property
    def headroom(self) -> float:
        """Smallest free fraction of any device's memory (negative: over the limit)."""
        if not self.memory:
            return 1.0
        return min(1 - self.memory[d] / self.memory_limit[d] for d in self.memory)

    def predicted(self) -> dict[str, float]:
        return {"throughput": self.throughput, "iteration_time_s": self.iteration_time_s,
                "bottleneck_s": self.bottleneck_s, "memory_headroom": self.headroom,
                "peak_memory_bytes": max(self.memory.values(), default=0.0)}


def pipeline_costs(plan: Plan, profile: ModelProfile, cost_model: CostModel, cluster: Cluster,
                   links: LinkCache | None = None, syncs: list[SharedSync] | None = None) -> list[PipelineCost]:
    """`syncs`: the plan's `shared_gradient_syncs`, when the caller has them already."""
    links = links or LinkCache(cluster)
    if syncs is None:
        syncs = shared_gradient_syncs(plan, profile, cost_model, links)
    out = []
    for pipe in plan.pipelines:
        mb = microbatch_size(plan, pipe)
        last = len(pipe.stages) - 1
        ops = [stage_op_times(profile, cost_model, cluster, s, mb, links, synced_elsewhere(s, syncs),
                              neighbours=(k > 0) + (k < last)) for k, s in enumerate(pipe.stages)]
        fwd_c, bwd_c, media = [], [], []
        for a, b in zip(pipe.stages, pipe.stages[1:]):
            nbytes = activation_bytes(profile, a.layers[1], mb, cost_model)
            tf, medium = boundary_transfer(a.devices, a.shares, b.devices, b.shares, nbytes, links)
            tb, _ = boundary_transfer(b.devices, b.shares, a.devices, a.shares, nbytes, links)
            fwd_c.append(tf), bwd_c.append(tb), media.append(medium)
        out.append(PipelineCost(ops, fwd_c, bwd_c, media, mb))
    return out


def memory_per_device(plan: Plan, profile: ModelProfile, cost_model: CostModel) -> dict[str, float]:
    """Peak training memory per device, with the micro-batches in flight of the schedule's action lists."""
    memory = {}
    for pipe in plan.pipelines:
        mb = microbatch_size(plan, pipe)
        for s, stage in enumerate(pipe.stages):
            k = stage_in_flight(plan.schedule, len(pipe.stages), s, plan.microbatches)
            for name, share in zip(stage.devices, stage.shares):
                memory[name] = cost_model.training_memory(profile, stage.layers[0], stage.layers[1],
                                                          share * mb, in_flight=k)
    return memory


def memory_problem(memory: dict[str, float], cluster: Cluster) -> str | None:
    """The first device whose memory is exceeded, said plainly, or None."""
    for name, need in memory.items():
        limit = cluster.devices[name].memory_bytes
        if need > limit:
            return (f"device {name!r} needs {need / 2**30:.2f} GiB (weights, gradients, optimizer state and "
                    f"activations in flight) but has {limit / 2**30:.2f} GiB")
    return None


def _pipeline_period(pc: PipelineCost, schedule: str, M: int) -> tuple[float, float]:
    """(time from the first forward to the last backward, steady-state period tau) of one pipeline.

    tau = max(F_s + B_s, Cf_b, Cb_b, load of each shared medium, and the round trip from stage s to the end
    and back over the micro-batches s keeps in flight under the schedule's action list: s runs only that many
    ahead). A schedule that runs in waves (`Schedule.waves`: GPipe) has a forward period and a backward one,
    each the slowest stage, transfer or medium of its direction."""
    F, B = [o.fwd_s for o in pc.stages], [o.bwd_s for o in pc.stages]
    media_load: dict[str, float] = {}
    for tf, tb, medium in zip(pc.fwd_comm, pc.bwd_comm, pc.comm_media):
        if medium:
            media_load[medium] = media_load.get(medium, 0.0) + tf + tb
    if get_schedule(schedule).waves:
        tau_f = max([*F, *pc.fwd_comm, *media_load.values()])
        tau_b = max([*B, *pc.bwd_comm, *media_load.values()])
        return sum(F) + sum(pc.fwd_comm) + sum(B) + sum(pc.bwd_comm) + (M - 1) * (tau_f + tau_b), tau_f + tau_b
    tau = max([f + b for f, b in zip(F, B)] + pc.fwd_comm + pc.bwd_comm + list(media_load.values()))
    S = len(F)
    for s in range(S):
        round_trip = sum(F[s:]) + sum(B[s:]) + sum(pc.fwd_comm[s:]) + sum(pc.bwd_comm[s:])
        tau = max(tau, round_trip / stage_in_flight(schedule, S, s, M))
    return sum(F) + sum(B) + sum(pc.fwd_comm) + sum(pc.bwd_comm) + (M - 1) * tau, tau


def estimate(plan: Plan, profile: ModelProfile, cost_model: CostModel, cluster: Cluster,
             links: LinkCache | None = None) -> Estimate:
    """Closed-form iteration time of a plan (the simulator replays the same operations as events).

    Per pipeline with S stages, M micro-batches, per-micro-batch stage times F_s, B_s and boundary transfers
    Cf_b, Cb_b, the pipeline takes sum(F + B) + sum(Cf + Cb) + (M - 1) tau (`_pipeline_period`).
    Stage s finishes its last backward sum_{k<s}(B_k + Cb_k) before the pipeline ends, then all-reduces
    its gradients in its group and steps its optimizer; parameters shared by several stages (a tied
    embedding and head) are all-reduced among those stages' devices once all of them are done; with several
    pipelines the whole model's gradients are also all-reduced across pipelines before the optimizer step."""
    links = links or LinkCache(cluster)
    syncs = shared_gradient_syncs(plan, profile, cost_model, links)
    costs = pipeline_costs(plan, profile, cost_model, cluster, links, syncs)
    M = plan.microbatches
    ends, bottleneck, opt_max = [], 0.0, 0.0
    finish_of: dict[tuple[int, int], float] = {}
    single = len(plan.pipelines) == 1
    for p, pc in enumerate(costs):
        B = [o.bwd_s for o in pc.stages]
        total, tau = _pipeline_period(pc, plan.schedule, M)
        bottleneck = max(bottleneck, tau)
        end = 0.0
        for s, ops in enumerate(pc.stages):
            finish = total - sum(B[:s]) - sum(pc.bwd_comm[:s])
            finish_of[(p, s)] = finish + ops.allreduce_s
            opt = max(ops.optimizer.values())
            opt_max = max(opt_max, opt)
            end = max(end, finish + ops.allreduce_s + (opt if single else 0.0))
        ends.append(end)
    for sync in syncs:  # after every stage using the shared parameters, then their optimizer steps
        opt = max(max(costs[p].stages[s].optimizer.values()) for p, s in sync.stages) if single else 0.0
        ends.append(max(finish_of[k] for k in sync.stages) + sync.seconds + opt)
    iteration = max(ends)
    if not single:
        iteration += cross_pipeline_allreduce(plan, profile, cost_model, links,
                                              sum(x.nbytes for x in syncs)) + opt_max
    memory = memory_per_device(plan, profile, cost_model)
    limits = {d: float(cluster.devices[d].memory_bytes) for d in memory}
    reason = memory_problem(memory, cluster)
    return Estimate(feasible=reason is None, reason=reason, iteration_time_s=iteration,
                    throughput=plan.batch / iteration if iteration > 0 else 0.0, bottleneck_s=bottleneck,
                    memory=memory, memory_limit=limits)
