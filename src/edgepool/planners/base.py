"""The `Planner` protocol, a registry of planners by name, and what every planner shares.

A planner decides and returns a `Plan`; it never executes and does no I/O. Every planner fills
`Plan.predicted` from `edgepool.planners.costing.estimate`, the same cost function the simulator replays.

`constraints` (all optional): `microbatches` (force M), `max_stages`, `devices` (use only these),
`schedule` ("1f1b" or "gpipe" where the planner allows a choice). `get_planner` wraps every planner so that it
also answers `objective="energy"` and energy or power budgets (`edgepool.planners.energy`); the planners
themselves search for throughput.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.network import LinkCache
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.planners.costing import Estimate, estimate
from edgepool.profile import ModelProfile

OBJECTIVES = ("throughput",)
CONSTRAINT_KEYS = ("microbatches", "max_stages", "devices", "schedule")


@runtime_checkable
class Planner(Protocol):
    name: str

    def plan(self, profile: ModelProfile, cluster: Cluster, cost_model: CostModel, batch: int,
             objective: str = "throughput", constraints: dict[str, Any] | None = None) -> Plan: ...


_REGISTRY: dict[str, Callable[[], Planner]] = {}


def register(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory
    return wrap


def _load_all() -> None:
    from edgepool.planners import dmp, dp, gpipe, hybrid, pipedream  # noqa: F401  (they register themselves)


def planner_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_planner(name: str) -> Planner:
    """The named planner, answering every objective (`edgepool.planners.energy.ObjectivePlanner`)."""
    from edgepool.planners.energy import ObjectivePlanner
    _load_all()
    if name not in _REGISTRY:
        raise SpecError(field="planner", value=name, accepted=", ".join(_REGISTRY))
    return ObjectivePlanner(_REGISTRY[name]())


# ----------------------------------------------------------------------------- shared helpers
def check_request(batch: int, objective: str, constraints: dict | None, cluster: Cluster) -> dict:
    if not isinstance(batch, int) or batch <= 0:
        raise SpecError(field="batch", value=batch, accepted="a positive integer (samples per iteration)")
    if objective not in OBJECTIVES:
        raise SpecError(field="objective", value=objective, accepted=", ".join(OBJECTIVES))
    constraints = dict(constraints or {})
    for key in constraints:
        if key not in CONSTRAINT_KEYS:
            raise SpecError(field="constraints", value=key, accepted=", ".join(CONSTRAINT_KEYS))
    for name in constraints.get("devices") or []:
        if name not in cluster.devices:
            raise SpecError(field="constraints.devices", value=name, accepted=", ".join(cluster.devices))
    m = constraints.get("microbatches")
    if m is not None and (not isinstance(m, int) or m <= 0 or m > batch):
        raise SpecError(field="constraints.microbatches", value=m, accepted=f"an integer in 1..{batch}")
    return constraints


def usable_devices(cluster: Cluster, constraints: dict) -> list[str]:
    return list(constraints.get("devices") or cluster.devices)


def microbatch_candidates(batch: int, constraints: dict, limit: int = 64) -> list[int]:
    """Micro-batch counts that divide the batch (so every micro-batch has a whole number of samples)."""
    if constraints.get("microbatches"):
        return [constraints["microbatches"]]
    divisors = [m for m in range(1, min(batch, limit) + 1) if batch % m == 0]
    if len(divisors) > 8:
        powers = [m for m in divisors if m & (m - 1) == 0]
        divisors = sorted(set(powers + [divisors[-1]]))
    return divisors


def make_plan(planner: str, profile: ModelProfile, cluster: Cluster, cost_model: CostModel, batch: int,
              microbatches: int, pipelines: list[PipelinePlan], schedule: str = "1f1b", notes: dict | None = None,
              links: LinkCache | None = None) -> tuple[Plan, Estimate]:
    """A plan with `predicted`, `feasible` and `infeasible_reason` filled in from the shared estimate."""
    plan = Plan(planner=planner, model=profile.model, cluster=cluster.name, num_layers=len(profile), batch=batch,
                microbatches=microbatches, schedule=schedule, precision=cost_model.precision, seq=profile.seq,
                pipelines=pipelines, notes=notes or {}, power_modes=modes_of(cluster, pipelines))
    est = estimate(plan, profile, cost_model, cluster, links)
    plan.predicted = est.predicted()
    if not est.feasible:
        plan.feasible, plan.infeasible_reason = False, est.reason
    return plan, est


def modes_of(cluster: Cluster, pipelines: list[PipelinePlan]) -> dict[str, str]:
    """The power modes the cluster sets for the devices these pipelines use (a plan records them)."""
    used = {d for p in pipelines for d in p.devices}
    return {d: m for d, m in cluster.power_modes.items() if d in used}


def infeasible_plan(planner: str, profile: ModelProfile, cluster: Cluster, cost_model: CostModel, batch: int,
                    reason: str, devices: list[str]) -> Plan:
    """A plan that says why no plan fits; its single stage lists the devices that were considered."""
    share = 1.0 / len(devices)
    shares = [share] * len(devices)
    shares[-1] = 1.0 - share * (len(devices) - 1)
    pipelines = [PipelinePlan(stages=[StagePlan(layers=(0, len(profile)), devices=devices, shares=shares)])]
    return Plan(planner=planner, model=profile.model, cluster=cluster.name, num_layers=len(profile), batch=batch,
                precision=cost_model.precision, seq=profile.seq, feasible=False, infeasible_reason=reason,
                pipelines=pipelines, power_modes=modes_of(cluster, pipelines))


def better(a: tuple[Plan, Estimate] | None, b: tuple[Plan, Estimate]) -> tuple[Plan, Estimate]:
    """Pick the feasible plan with the higher predicted throughput (feasible beats infeasible)."""
    if a is None:
        return b
    (_, ea), (_, eb) = a, b
    if ea.feasible != eb.feasible:
        return a if ea.feasible else b
    if not ea.feasible:  # both infeasible: the one that misses by less
        return a if ea.headroom >= eb.headroom else b
    return a if ea.throughput >= eb.throughput else b
