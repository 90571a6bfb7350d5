"""Simulator: replays one training iteration of a `Plan` micro-batch by micro-batch and reports it.

Each stage group runs its forward and backward passes in the schedule's order (1F1B: warm-up forwards,
then one backward per forward, then the remaining backwards; GPipe: all forwards, then all backwards in
reverse). Activations and their gradients move over the links between consecutive groups; a directed
boundary is one channel (links are full duplex) unless it crosses a shared medium, whose capacity every
transfer on it shares (transfers on one medium take turns at its full rate). After its last backward a
stage all-reduces its gradients inside its group; parameters several stages share (a tied embedding and
head) are all-reduced among those stages' devices; with several pipelines the whole model's gradients are
then all-reduced across pipelines; then every device steps its optimizer. Every duration comes from the
same functions the planners' estimate uses (`edgepool.planners.costing`); the simulator composes them as
events instead of a closed form. Peak memory counts the micro-batches a stage really holds in flight in
the replayed order; a plan that exceeds any device's memory is reported infeasible, never run.
Energy is modelled (busy time at full dynamic power, the rest at idle power), per iteration.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.plan import Plan
from edgepool.planners.costing import (LinkCache, cross_pipeline_allreduce, device_mode, memory_per_device,
                                       memory_problem, pipeline_costs, shared_gradient_syncs)
from edgepool.profile import ModelProfile
from edgepool.report import DeviceStats, Report, TimelineEvent


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


def stage_order(schedule: str, stage: int, num_stages: int, microbatches: int) -> list[tuple[str, int]]:
    """The order a stage runs its passes: [("fwd", 0), ("fwd", 1), ("bwd", 0), ...]."""
    M = microbatches
    if schedule == "gpipe":
        return [("fwd", i) for i in range(M)] + [("bwd", i) for i in reversed(range(M))]
    warm = min(num_stages - stage, M)
    order = [("fwd", i) for i in range(warm)]
    f, b = warm, 0
    while b < M:
        order.append(("bwd", b))
        b += 1
        if f < M:
            order.append(("fwd", f))
            f += 1
    return order


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
    links = LinkCache(cluster)
    syncs = shared_gradient_syncs(plan, profile, cost_model, links)
    costs = pipeline_costs(plan, profile, cost_model, cluster, links, syncs)
    M, single = plan.microbatches, len(plan.pipelines) == 1
    ops: list[_Op] = []
    programs: dict[object, list[int]] = {}
    max_in_flight: dict[tuple[int, int], int] = {}

    def add(op: _Op) -> int:
        ops.append(op)
        return len(ops) - 1

    last_ops: list[int] = []  # all-reduce (or last backward) of every stage
    optimizer_after: list[tuple[int, int, int]] = []  # (pipeline, stage, op it follows)
    for p, (pipe, pc) in enumerate(zip(plan.pipelines, costs)):
        S = len(pipe.stages)
        fwd_id: dict[tuple[int, int], int] = {}
        bwd_id: dict[tuple[int, int], int] = {}
        send_f: dict[tuple[int, int], int] = {}
        send_b: dict[tuple[int, int], int] = {}
        # create compute ops first (dependencies filled after every op exists)
        for s, (stage, so) in enumerate(zip(pipe.stages, pc.stages)):
            order = stage_order(plan.schedule, s, S, M)
            held = peak = 0
            for phase, i in order:
                held += 1 if phase == "fwd" else -1
                peak = max(peak, held)
            max_in_flight[(p, s)] = peak
            ids = []
            for phase, i in order:
                times = so.fwd if phase == "fwd" else so.bwd
                op = add(_Op(phase, ("stage", p, s), max(times.values()), [], p, s, i, devices=dict(times)))
                (fwd_id if phase == "fwd" else bwd_id)[(s, i)] = op
                ids.append(op)
            programs[("stage", p, s)] = ids
        for s in range(S - 1):
            a, b = pipe.stages[s], pipe.stages[s + 1]
            medium = pc.comm_media[s]
            for i in range(M):
                send_f[(s, i)] = add(_Op("send", medium or ("link", p, s, "fwd"), pc.fwd_comm[s], [fwd_id[(s, i)]],
                                         p, s, i, senders=a.devices, receivers=b.devices))
                send_b[(s + 1, i)] = add(_Op("send", medium or ("link", p, s, "bwd"), pc.bwd_comm[s],
                                             [bwd_id[(s + 1, i)]], p, s + 1, i, senders=b.devices,
                                             receivers=a.devices))
        for s in range(S):
            for i in range(M):
                if s > 0:
                    ops[fwd_id[(s, i)]].deps.append(send_f[(s - 1, i)])
                if s < S - 1:
                    ops[bwd_id[(s, i)]].deps.append(send_b[(s + 1, i)])
                else:
                    ops[bwd_id[(s, i)]].deps.append(fwd_id[(s, i)])
        for s, (stage, so) in enumerate(zip(pipe.stages, pc.stages)):
            last = programs[("stage", p, s)][-1]
            if len(stage.devices) > 1 and so.allreduce_s > 0:
                last = add(_Op("allreduce", so.allreduce_medium or ("allreduce", p, s), so.allreduce_s, [last], p, s,
                               devices={d: so.allreduce_s for d in stage.devices}))
            last_ops.append(last)
            optimizer_after.append((p, s, last))
    last_of = {(p, s): last for p, s, last in optimizer_after}
    extra_deps: dict[tuple[int, int], list[int]] = {}
    for k, sync in enumerate(syncs):  # tied parameters: once every stage using them is done
        op = add(_Op("allreduce", sync.medium or ("shared", k), sync.seconds, [last_of[x] for x in sync.stages], -1,
                     devices={d: sync.seconds for d in sync.devices}))
        last_ops.append(op)
        for x in sync.stages:
            extra_deps.setdefault(x, []).append(op)
    cross_id = None
    if not single:
        cross = cross_pipeline_allreduce(plan, profile, cost_model, links, sum(x.nbytes for x in syncs))
        cross_id = add(_Op("allreduce", ("cross",), cross, list(last_ops), -1,
                           devices={d: cross for d in plan.devices}))
    for p, s, last in optimizer_after:
        so = costs[p].stages[s]
        deps = [cross_id] if cross_id is not None else [last, *extra_deps.get((p, s), [])]
        op = add(_Op("optimizer", ("stage", p, s), max(so.optimizer.values()), deps, p, s,
                     devices=dict(so.optimizer)))
        programs[("stage", p, s)].append(op)
    _run(ops, programs)

    iteration = max(op.end for op in ops)
    timeline: list[TimelineEvent] = []
    busy: dict[str, float] = {d: 0.0 for d in plan.devices}
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
            if op.kind in ("fwd", "bwd", "optimizer"):
                busy[d] += t
            timeline.append(TimelineEvent(device=d, kind=op.kind, start=op.start, end=op.start + t,
                                          microbatch=op.microbatch, stage=stage, iteration=0))
    timeline.sort(key=lambda e: (e.start, e.device))

    memory = memory_per_device(plan, profile, cost_model, in_flight_of=lambda p, s: max_in_flight[(p, s)])
    problem = memory_problem(memory, cluster)
    per_device = {}
    for d in plan.devices:
        device = cluster.devices[d]
        mode = device_mode(cluster, d)
        per_device[d] = DeviceStats(
            busy_s=busy[d], utilization=busy[d] / iteration if iteration > 0 else 0.0,
            peak_memory_bytes=memory[d], memory_limit_bytes=float(device.memory_bytes),
            energy_j=cost_model.energy(device, busy[d], max(iteration - busy[d], 0.0), mode),
            energy_source="modelled")
    energy = sum(s.energy_j for s in per_device.values())
    metrics = {
        "simulated_iteration_time_s": iteration, "microbatches": M, "schedule": plan.schedule,
        "stages": [len(p.stages) for p in plan.pipelines], "pipelines": len(plan.pipelines),
        "energy_j_per_iteration": energy, "energy_j_per_sample": energy / plan.batch, "energy": "modelled",
        "predicted_throughput": plan.predicted.get("throughput"),
        "memory_headroom": min(1 - memory[d] / cluster.devices[d].memory_bytes for d in memory),
        "in_flight": {f"{p}.{s}": k for (p, s), k in max_in_flight.items()},
    }
    where = f"{describe_simulator(cost_model)}; one iteration replayed"
    feasible = problem is None and plan.feasible
    reason = problem or (plan.infeasible_reason if not plan.feasible else None)
    return Report(source="simulated", where=where, planner=plan.planner, model=plan.model, cluster=cluster.name,
                  feasible=feasible, infeasible_reason=reason,
                  throughput=plan.batch / iteration if feasible and iteration > 0 else None,
                  iteration_time_s=iteration if feasible else None, per_device=per_device, timeline=timeline,
                  metrics=metrics)
