"""Device failures and joins in the simulator: throughput over time across a failure, pipeline replay vs restart.

`simulate_with_events` composes `edgepool.simulator.simulate` over plan segments. Between events the pool runs
the current plan at the simulator's iteration time. A `DeviceFailure` at t interrupts the running iteration
(its partial work is lost); then pipeline replay costs

    detection (heartbeat timeout, or ~0 for a process death noticed by its exit) + re-planning (the planner,
    timed here) + state transfer (each moved block's weights and optimizer state over the slowest link from
    its holder to its new device, cost model) + the interrupted iteration again on the new plan,

while checkpoint restart costs detection + `restart_s` (processes, imports, process group) + loading the last
checkpoint + every iteration since that checkpoint again. A `DeviceJoin` re-plans at the next iteration
boundary and moves the joiner's blocks. The failure's cost is the recovery strategy's
(`RecoveryStrategy.simulate_failure`, strategy.py). Everything here is simulated (cost model), and labelled so.

`simulate_elastic` is the entry point: it checks the events, re-plans with the plan's own planner unless given a
`replan`, and returns a `Report` whose `timeline` holds the run's segments as typed events (one per device and
segment, kind "train" or "recovery"); `simulate_with_events` is the replay itself, an `EventTimeline`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.elastic.handover import transfer_seconds
from edgepool.elastic.replan import replanner
from edgepool.elastic.strategy import PipelineReplay, RecoveryStrategy, SimulatedFailure
from edgepool.errors import SpecError
from edgepool.events import DeviceFailure, DeviceJoin, Event, LinkChange, event_device
from edgepool.plan import Plan
from edgepool.planners import planner_names
from edgepool.profile import ModelProfile
from edgepool.report import Report, TimelineEvent
from edgepool.simulator import describe_simulator, simulate


@dataclass
class Segment:
    """A stretch of the run: training on `devices` at `throughput`, or a recovery (its costs in `detail`)."""
    start_s: float
    end_s: float
    kind: str  # "train", "recovery", "restart"
    devices: list[str]
    throughput: float = 0.0  # samples/s while training
    detail: dict = field(default_factory=dict)


@dataclass
class EventTimeline:
    mode: str  # the recovery strategy's name
    segments: list[Segment]
    iterations: list[tuple[int, float]]  # (step, completion time)
    batch: int
    recoveries: list[dict]

    def throughput_series(self, bin_s: float) -> list[tuple[float, float]]:
        """(bin start, samples/s of iterations completed in that bin)."""
        if not self.iterations:
            return []
        end = self.iterations[-1][1]
        bins = int(end // bin_s) + 1
        counts = [0] * bins
        for _, t in self.iterations:
            counts[min(int(t // bin_s), bins - 1)] += 1
        return [(i * bin_s, c * self.batch / bin_s) for i, c in enumerate(counts)]

    def throughput_curve(self) -> list[tuple[float, float]]:
        """`throughput_series` in about 60 bins over the run (at least 0.5 s each): what a plot shows."""
        span = max(self.iterations[-1][1] / 60, 0.5) if self.iterations else 1.0
        return self.throughput_series(span)

    def timeline_events(self) -> list[TimelineEvent]:
        """The segments as typed timeline events: one per device and segment, kind "train" or "recovery"."""
        return [TimelineEvent(device=d, kind=seg.kind, start=seg.start_s, end=seg.end_s)
                for seg in self.segments for d in seg.devices]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "source": "simulated",
                "segments": [s.__dict__ for s in self.segments], "recoveries": self.recoveries,
                "iterations": self.iterations}


def simulate_with_events(plan: Plan, cluster: Cluster, cost_model: CostModel, profile: ModelProfile,
                         events: Sequence[DeviceFailure | DeviceJoin], replan: Callable[[list[str]], Plan],
                         duration_s: float, strategy: RecoveryStrategy | None = None,
                         detection_s: float = 1.0) -> EventTimeline:
    """Iterations over `duration_s` seconds with the events applied, failures recovered by `strategy`
    (default: pipeline replay)."""
    strategy = strategy or PipelineReplay()
    pending = sorted(events, key=lambda e: e.at_s)
    t, step, current = 0.0, 0, plan
    segments: list[Segment] = []
    iterations: list[tuple[int, float]] = []
    recoveries: list[dict] = []
    report = simulate(current, cluster, cost_model, profile)
    seg_start = 0.0
    while t < duration_s:
        it = report.iteration_time_s
        event = pending[0] if pending else None
        if event is not None and isinstance(event, DeviceFailure) and event.at_s < t + it:
            pending.pop(0)
            segments.append(Segment(seg_start, event.at_s, "train", current.devices, report.throughput))
            alive = [d for d in current.devices if d != event.device]
            t0 = time.perf_counter()
            new = replan(alive)
            plan_s = time.perf_counter() - t0
            new_report = simulate(new, cluster, cost_model, profile)
            rec = strategy.simulate_failure(SimulatedFailure(step, current, new, alive, profile, cluster, cost_model,
                                                             detection_s, plan_s))
            step = rec.resume_step
            segments.append(Segment(event.at_s, event.at_s + rec.cost_s, "recovery", alive, 0.0, rec.detail))
            t = event.at_s + rec.cost_s
            current, report, seg_start = new, new_report, t
            recoveries.append({"device": event.device, "at_s": event.at_s, "mode": strategy.name,
                               "regained_s": rec.cost_s + rec.redo * new_report.iteration_time_s, **rec.detail})
            continue
        if event is not None and isinstance(event, DeviceJoin) and event.at_s <= t:
            pending.pop(0)
            name = event_device(event)
            segments.append(Segment(seg_start, t, "train", current.devices, report.throughput))
            new = replan(current.devices + [name])
            move_s = transfer_seconds(current, new, profile, cluster, cost_model, current.devices)
            t += move_s
            current, report, seg_start = new, simulate(new, cluster, cost_model, profile), t
            recoveries.append({"device": name, "at_s": event.at_s, "mode": "join", "state_transfer_s": move_s})
            continue
        t += it
        iterations.append((step, t))
        step += 1
    segments.append(Segment(seg_start, t, "train", current.devices, report.throughput))
    return EventTimeline(strategy.name, segments, iterations, plan.batch, recoveries)


def simulate_elastic(plan: Plan, cluster: Cluster, cost_model: CostModel, profile: ModelProfile,
                     events: Sequence[Event], *, replan: Callable[[list[str]], Plan] | None = None,
                     duration_s: float | None = None, recovery: RecoveryStrategy | None = None,
                     detection_s: float = 1.0) -> Report:
    """The pool over time with device failures and joins: a `Report` with source="simulated".

    Replays `plan` as `simulate_with_events` models it: detection, re-planning with `replan(devices)` (default:
    the plan's own planner), state transfer and the `recovery` strategy (default `PipelineReplay()`: pipeline
    replay from in-memory replicas; `CheckpointRestart(...)`: restart from the last checkpoint), for `duration_s`
    seconds (default: the last event plus as long again, at least 20 iterations); a failure is noticed after
    `detection_s`. The report's throughput is the average over the run, its `timeline` the segments (typed
    events, kind "train" or "recovery", per device), and `metrics["events"]` the same timeline as data:
    segments, recoveries and every iteration's completion time. An infeasible plan's one-iteration report is
    returned as it is.
    """
    _check_events(events, cluster)
    base = simulate(plan, cluster, cost_model, profile)
    if not base.feasible:
        return base
    if replan is None:
        replan = _own_planner(plan, profile, cluster, cost_model)
    if duration_s is None:
        last = max((e.at_s for e in events), default=0.0)
        duration_s = last + max(last, 20 * base.iteration_time_s)
    recovery = recovery or PipelineReplay()
    timeline = simulate_with_events(plan, cluster, cost_model, profile, events, replan, duration_s, recovery,
                                    detection_s)
    done = len(timeline.iterations)
    end = max([duration_s] + [t for _, t in timeline.iterations])
    trains = [seg for seg in timeline.segments if seg.kind == "train"]
    metrics = {**base.metrics, "events": timeline.to_dict(), "duration_s": end, "iterations": done,
               "throughput_before": trains[0].throughput, "throughput_after": trains[-1].throughput}
    where = (f"{describe_simulator(cost_model)}; {end:.4g} s with {len(events)} device event(s) and "
             f"{recovery.name} recovery (edgepool.elastic.sim_events)")
    return base.model_copy(update={"where": where, "throughput": done * plan.batch / end,
                                   "iteration_time_s": end / done if done else None,
                                   "timeline": timeline.timeline_events(), "metrics": metrics})


def _check_events(events: Sequence[Event], cluster: Cluster) -> None:
    changes = [e for e in events if isinstance(e, LinkChange)]
    if changes:
        raise NotImplementedError(f"link changes ({changes[0]}) are not modelled by the simulator yet; "
                                  "simulate device failures and joins only")
    for e in events:
        name = event_device(e)
        if name not in cluster.devices:
            raise SpecError(field="events.device", value=name, accepted=", ".join(cluster.devices),
                            hint="a failing or joining device must be a device of the cluster")


def _own_planner(plan: Plan, profile: ModelProfile, cluster: Cluster, cost_model: CostModel):
    """`replan(devices)` with the planner that made `plan`; a `SpecError` when it is not registered."""
    if plan.planner not in planner_names():
        raise SpecError(field="replan", value=None, accepted="a function devices -> Plan",
                        hint=f"the plan's planner {plan.planner!r} is not registered, so it cannot re-plan")
    return replanner(plan.planner, profile, cluster, cost_model, plan.batch)
