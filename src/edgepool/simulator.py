"""Simulator: replays one training iteration of a `Plan` micro-batch by micro-batch and reports it.

Each stage group runs the action list of the plan's schedule (`edgepool.schedule.stage_actions`, the lists
the runtime's workers execute): its passes in that order, each send a transfer the receiving pass waits
for. Activations and their gradients move over the links between consecutive groups; a directed
boundary is one channel (links are full duplex) unless it crosses a shared medium, whose capacity every
transfer on it shares (transfers on one medium take turns at its full rate). After its last backward a
stage all-reduces its gradients inside its group; parameters several stages share (a tied embedding and
head) are all-reduced among those stages' devices; with several pipelines the whole model's gradients are
then all-reduced across pipelines; then every device steps its optimizer. Every duration comes from the
same functions the planners' estimate uses (`edgepool.planners.costing`); the simulator composes them as
events instead of a closed form. Peak memory counts the micro-batches a stage holds in flight under its
action list; a plan that exceeds any device's memory is reported infeasible, never run.
Energy is modelled per iteration, in each device's power mode (the plan's `power_modes`): busy time at full
dynamic power, the rest at idle power, plus the network interface's draw while the device moves data; each
device's `energy_breakdown_j` splits it into compute, communication and idle while waiting.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.network import LinkCache
from edgepool.plan import PipelinePlan, Plan
from edgepool.planners.costing import (PipelineCost, SharedSync, cross_pipeline_allreduce, device_mode,
                                       memory_per_device, memory_problem, pipeline_costs, shared_gradient_syncs)
from edgepool.profile import ModelProfile
from edgepool.report import COMPUTE_KINDS, NETWORK_KINDS, DeviceStats, Report, TimelineEvent
from edgepool.schedule import Action, in_flight, stage_actions


# ----------------------------------------------------------------------------- the replay
@dataclass
class _Op:
    kind: str  # fwd, bwd, send, allreduce, optimizer
    resource: object
    duration: float
    deps: list[int]
    pipeline: int
    stage: int | None = None
    microbatch: int | None = None
    devices: dict[str, float] = field(default_factory=dict)  # device -> its own busy time (compute ops)
    senders: list[str] = field(default_factory=list)
    receivers: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


def _run(ops: list[_Op], programs: dict[object, list[int]]) -> None:
    """List scheduling: stage resources follow their program order; other resources serve the earliest ready."""
    program_of = {i: r for r, ids in programs.items() for i in ids}
    position = {r: 0 for r in programs}
    waiting = [len(op.deps) for op in ops]
    dependents: list[list[int]] = [[] for _ in ops]
    for i, op in enumerate(ops):
        for d in op.deps:
            dependents[d].append(i)
    free: dict[object, float] = {}
    heap: list[tuple[float, int]] = []

    def ready_time(i: int) -> float:
        return max([ops[d].end for d in ops[i].deps], default=0.0)

    def offer(i: int) -> None:
        r = program_of.get(i)
        if r is not None and programs[r][position[r]] != i:
            return
        heapq.heappush(heap, (max(ready_time(i), free.get(ops[i].resource, 0.0)), i))

    for i in range(len(ops)):
        if waiting[i] == 0:
            offer(i)
    done = 0
    while heap:
        key, i = heapq.heappop(heap)
        op = ops[i]
        start = max(ready_time(i), free.get(op.resource, 0.0))
        if start > key + 1e-15:
            heapq.heappush(heap, (start, i))
            continue
        op.start, op.end = start, start + op.duration
        free[op.resource] = op.end
        done += 1
        r = program_of.get(i)
        if r is not None:
            position[r] += 1
            if position[r] < len(programs[r]) and waiting[programs[r][position[r]]] == 0:
                offer(programs[r][position[r]])
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                offer(j)
    if done != len(ops):
        raise RuntimeError(f"simulator deadlock: {len(ops) - done} operations never became ready")


def describe_simulator(cost_model: CostModel) -> str:
    """What produced a simulated figure: the simulator and its cost model (a `Report`'s `where` starts so)."""
    return (f"edgepool simulator: {type(cost_model).__name__} (roofline, precision {cost_model.precision}, "
            f"optimizer {cost_model.optimizer})")


def simulate(plan: Plan, cluster: Cluster, cost_model: CostModel, profile: ModelProfile) -> Report:
    """Replay one iteration of `plan` on `cluster`; a `Report` with source="simulated".

    Device failures and joins over time are `edgepool.elastic.sim_events.simulate_elastic`, which composes this.
    """
    _check_request(plan, cluster, profile)
    cluster = cluster.with_power_modes(plan.power_modes)
    # every duration from the planners' own cost functions; the replay composes them as events
    links = LinkCache(cluster)
    syncs = shared_gradient_syncs(plan, profile, cost_model, links)
    costs = pipeline_costs(plan, profile, cost_model, cluster, links, syncs)
    cross_s = None  # with several pipelines, the whole model's gradients are all-reduced across them
    if len(plan.pipelines) > 1:
        cross_s = cross_pipeline_allreduce(plan, profile, cost_model, links, sum(x.nbytes for x in syncs))
    iteration = _build_iteration(plan, costs, syncs, cross_s)
    _run(iteration.ops, iteration.programs)
    return _report(plan, cluster, cost_model, profile, iteration)


def _check_request(plan: Plan, cluster: Cluster, profile: ModelProfile) -> None:
    """Refuse, naming the field, a plan made for another cluster or model, or one that is not for training."""
    for d in plan.devices:
        if d not in cluster.devices:
            raise SpecError(field="plan.pipelines.stages.devices", value=d,
                            accepted=f"devices of cluster {cluster.name!r}: {', '.join(cluster.devices)}",
                            hint="the plan was made for another cluster")
    if plan.num_layers != len(profile):
        raise SpecError(field="plan.num_layers", value=plan.num_layers, accepted=str(len(profile)),
                        hint=f"the plan was made for another model than {profile.model!r}")
    if plan.kind != "training":
        raise SpecError(field="plan.kind", value=plan.kind, accepted="training")


# ----------------------------------------------------------------------------- one iteration as operations
@dataclass
class _Iteration:
    """The operations of one iteration, each stage's program (its operations in order), the action list
    it came from and how many micro-batches each stage holds at most under it."""
    ops: list[_Op] = field(default_factory=list)
    programs: dict[object, list[int]] = field(default_factory=dict)
    actions: dict[tuple[int, int], list[Action]] = field(default_factory=dict)
    in_flight: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, op: _Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1


def _build_iteration(plan: Plan, costs: list[PipelineCost], syncs: list[SharedSync],
                     cross_s: float | None) -> _Iteration:
    """Every operation of one iteration. The creation order is part of the behaviour: the replay breaks ties
    between equally ready operations by it."""
    it = _Iteration()
    finished: list[tuple[int, int, int]] = []  # (pipeline, stage, the op after which its gradients are final)
    for p, (pipe, pc) in enumerate(zip(plan.pipelines, costs)):
        passes = _add_passes(it, p, pipe, pc, plan.schedule, plan.microbatches)
        _add_transfers(it, p, pipe, pc, passes)
        finished += _add_stage_allreduces(it, p, pipe, pc)
    sync_ops, waits_for_sync = _add_shared_syncs(it, syncs, finished)
    cross_id = None
    if cross_s is not None:  # several pipelines: the whole model's gradients, once every stage and sync is done
        cross_id = it.add(_Op("allreduce", ("cross",), cross_s, [last for _, _, last in finished] + sync_ops, -1,
                              devices={d: cross_s for d in plan.devices}))
    _add_optimizer_steps(it, costs, finished, waits_for_sync, cross_id)
    return it


def _add_passes(it: _Iteration, p: int, pipe: PipelinePlan, pc: PipelineCost, schedule: str,
                microbatches: int) -> dict[tuple[int, str, int], int]:
    """Each stage's forward and backward passes in the order of its action list, which becomes the stage's
    program; their dependencies are filled in by `_add_transfers` once every pass exists.
    Returns (stage, kind, micro-batch) -> the pass."""
    passes: dict[tuple[int, str, int], int] = {}
    for s, so in enumerate(pc.stages):
        actions = stage_actions(schedule, len(pipe.stages), s, microbatches)
        it.actions[(p, s)] = actions
        it.in_flight[(p, s)] = in_flight(actions)
        ids = []
        for a in actions:
            times = so.fwd if a.kind == "fwd" else so.bwd
            op = it.add(_Op(a.kind, ("stage", p, s), max(times.values()), [], p, s, a.microbatch, devices=dict(times)))
            passes[(s, a.kind, a.microbatch)] = op
            ids.append(op)
        it.programs[("stage", p, s)] = ids
    return passes


def _add_transfers(it: _Iteration, p: int, pipe: PipelinePlan, pc: PipelineCost,
                   passes: dict[tuple[int, str, int], int]) -> None:
    """One transfer per send in the stages' action lists (activations forward, gradients backward), and each
    receiving pass waits for its transfer; a backward that receives nothing (the last stage's) waits for its
    own forward. A boundary on a shared medium queues on that medium; otherwise each direction is its own
    channel. Transfers are created boundary by boundary, micro-batch by micro-batch, forward first."""
    sends = [(s, a) for s in range(len(pipe.stages)) for a in it.actions[(p, s)] if a.send_to is not None]
    sends.sort(key=lambda x: (min(x[0], x[1].send_to), x[1].microbatch, x[1].kind != "fwd"))
    transfer: dict[tuple[int, int, str, int], int] = {}  # (from, to, kind, micro-batch) -> the transfer
    for s, a in sends:
        boundary = min(s, a.send_to)
        seconds = (pc.fwd_comm if a.kind == "fwd" else pc.bwd_comm)[boundary]
        transfer[(s, a.send_to, a.kind, a.microbatch)] = it.add(_Op(
            "send", pc.comm_media[boundary] or ("link", p, boundary, a.kind), seconds,
            [passes[(s, a.kind, a.microbatch)]], p, s, a.microbatch,
            senders=pipe.stages[s].devices, receivers=pipe.stages[a.send_to].devices))
    for s in range(len(pipe.stages)):
        for a in it.actions[(p, s)]:
            if a.recv_from is not None:
                it.ops[passes[(s, a.kind, a.microbatch)]].deps.append(
                    transfer[(a.recv_from, s, a.kind, a.microbatch)])
            elif a.kind == "bwd":  # the last stage turns its own forward around
                it.ops[passes[(s, "bwd", a.microbatch)]].deps.append(passes[(s, "fwd", a.microbatch)])


def _add_stage_allreduces(it: _Iteration, p: int, pipe: PipelinePlan, pc: PipelineCost) -> list[tuple[int, int, int]]:
    """A data-parallel stage all-reduces its gradients inside its group after its last backward.
    Returns (pipeline, stage, the op after which the stage's own gradients are final) for each stage."""
    finished = []
    for s, (stage, so) in enumerate(zip(pipe.stages, pc.stages)):
        last = it.programs[("stage", p, s)][-1]
        if len(stage.devices) > 1 and so.allreduce_s > 0:
            last = it.add(_Op("allreduce", so.allreduce_medium or ("allreduce", p, s), so.allreduce_s, [last], p, s,
                              devices={d: so.allreduce_s for d in stage.devices}))
        finished.append((p, s, last))
    return finished


def _add_shared_syncs(it: _Iteration, syncs: list[SharedSync], finished: list[tuple[int, int, int]]
                      ) -> tuple[list[int], dict[tuple[int, int], list[int]]]:
    """Parameters several stages share (a tied embedding and head) are all-reduced once every stage using them
    is done. Returns the sync ops, and for each (pipeline, stage) the syncs its optimizer must wait for."""
    last_of = {(p, s): last for p, s, last in finished}
    sync_ops: list[int] = []
    waits_for: dict[tuple[int, int], list[int]] = {}
    for k, sync in enumerate(syncs):
        op = it.add(_Op("allreduce", sync.medium or ("shared", k), sync.seconds, [last_of[x] for x in sync.stages],
                        -1, devices={d: sync.seconds for d in sync.devices}))
        sync_ops.append(op)
        for x in sync.stages:
            waits_for.setdefault(x, []).append(op)
    return sync_ops, waits_for


def _add_optimizer_steps(it: _Iteration, costs: list[PipelineCost], finished: list[tuple[int, int, int]],
                         waits_for_sync: dict[tuple[int, int], list[int]], cross_id: int | None) -> None:
    """Every stage ends its program with an optimizer step, once its gradients are final: after the
    cross-pipeline all-reduce when there is one, else after its own all-reduce and any tied-parameter sync."""
    for p, s, last in finished:
        so = costs[p].stages[s]
        deps = [cross_id] if cross_id is not None else [last, *waits_for_sync.get((p, s), [])]
        op = it.add(_Op("optimizer", ("stage", p, s), max(so.optimizer.values()), deps, p, s,
                        devices=dict(so.optimizer)))
        it.programs[("stage", p, s)].append(op)


# ----------------------------------------------------------------------------- the replayed iteration as a Report
def _timeline(ops: list[_Op], devices: list[str]) -> tuple[list[TimelineEvent], dict[str, float]]:
    """One event per device and operation (a transfer is a send on each sender and a recv on each receiver),
    sorted by start; and each device's busy time, which counts its passes and optimizer steps only."""
    timeline: list[TimelineEvent] = []
    busy: dict[str, float] = {d: 0.0 for d in devices}
    for op in ops:
        stage = op.stage
        if op.kind == "send":
            for d in op.senders:
                timeline.append(TimelineEvent(device=d, kind="send", start=op.start, end=op.end,
                                              microbatch=op.microbatch, stage=stage, iteration=0))
            for d in op.receivers:
                timeline.append(TimelineEvent(device=d, kind="recv", start=op.start, end=op.end,
                                              microbatch=op.microbatch, stage=stage, iteration=0))
            continue
        for d, t in op.devices.items():
            if op.kind in COMPUTE_KINDS:
                busy[d] += t
            timeline.append(TimelineEvent(device=d, kind=op.kind, start=op.start, end=op.start + t,
                                          microbatch=op.microbatch, stage=stage, iteration=0))
    timeline.sort(key=lambda e: (e.start, e.device))
    return timeline, busy


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of [start, end) spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _device_stats(plan: Plan, cluster: Cluster, cost_model: CostModel, timeline: list[TimelineEvent],
                  busy: dict[str, float], memory: dict[str, float], iteration: float) -> dict[str, DeviceStats]:
    """Utilization, peak memory and modelled energy per device, in the device's power mode, split three ways:
    compute (busy time at full dynamic power), communication (the network interface's extra draw while it
    moves data, plus idle power while the device only communicates) and idle (waiting at idle power)."""
    compute: dict[str, list] = {d: [] for d in plan.devices}
    network: dict[str, list] = {d: [] for d in plan.devices}
    for e in timeline:
        if e.kind in COMPUTE_KINDS:
            compute[e.device].append((e.start, e.end))
        elif e.kind in NETWORK_KINDS:
            network[e.device].append((e.start, e.end))
    per_device = {}
    for d in plan.devices:
        device, mode = cluster.devices[d], device_mode(cluster, d)
        network_s = _covered(network[d])
        network_only_s = _covered(network[d] + compute[d]) - _covered(compute[d])
        idle_s = max(iteration - busy[d] - network_only_s, 0.0)
        parts = {"compute": cost_model.energy(device, busy[d], mode=mode),
                 "communication": cost_model.energy(device, 0.0, network_only_s, mode, network_s),
                 "idle": cost_model.energy(device, 0.0, idle_s, mode)}
        per_device[d] = DeviceStats(
            busy_s=busy[d], utilization=busy[d] / iteration if iteration > 0 else 0.0,
            peak_memory_bytes=memory[d], memory_limit_bytes=float(device.memory_bytes),
            energy_j=sum(parts.values()), energy_source="modelled", energy_breakdown_j=parts)
    return per_device


def _report(plan: Plan, cluster: Cluster, cost_model: CostModel, profile: ModelProfile, it: _Iteration) -> Report:
    """The replay as a `Report`; a plan over any device's memory, or one its planner found infeasible, is
    reported infeasible with no throughput."""
    iteration = max(op.end for op in it.ops)
    timeline, busy = _timeline(it.ops, plan.devices)
    memory = memory_per_device(plan, profile, cost_model)
    problem = memory_problem(memory, cluster)
    per_device = _device_stats(plan, cluster, cost_model, timeline, busy, memory, iteration)
    energy = sum(s.energy_j for s in per_device.values())
    metrics = {
        "simulated_iteration_time_s": iteration, "microbatches": plan.microbatches, "schedule": plan.schedule,
        "stages": [len(p.stages) for p in plan.pipelines], "pipelines": len(plan.pipelines),
        "energy_j_per_iteration": energy, "energy_j_per_sample": energy / plan.batch, "energy": "modelled",
        "average_power_w": energy / iteration if iteration > 0 else 0.0,
        "energy_breakdown_j_per_sample": {k: sum(s.energy_breakdown_j[k] for s in per_device.values()) / plan.batch
                                          for k in ("compute", "idle", "communication")},
        "predicted_throughput": plan.predicted.get("throughput"),
        "memory_headroom": min(1 - memory[d] / cluster.devices[d].memory_bytes for d in memory),
        "in_flight": {f"{p}.{s}": k for (p, s), k in it.in_flight.items()},
    }
    where = f"{describe_simulator(cost_model)}; one iteration replayed"
    feasible = problem is None and plan.feasible
    reason = problem or (plan.infeasible_reason if not plan.feasible else None)
    return Report(source="simulated", where=where, planner=plan.planner, model=plan.model, cluster=cluster.name,
                  feasible=feasible, infeasible_reason=reason,
                  throughput=plan.batch / iteration if feasible and iteration > 0 else None,
                  iteration_time_s=iteration if feasible else None, per_device=per_device, timeline=timeline,
                  metrics=metrics)
