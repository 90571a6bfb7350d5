"""Re-planning after a membership change: `replan(devices) -> Plan`, one registered planner on a subset.

The supervisor (`recovery.ElasticRun`), the elastic simulation (`sim_events.simulate_elastic`) and the command
line all take a `replan` callable; `replanner` is the one way to make it from a planner's name.
"""
from __future__ import annotations

from typing import Callable

from edgepool.plan import Plan
from edgepool.planners import get_planner


def replanner(planner: str, profile, cluster, cost_model, batch: int, constraints: dict | None = None,
              require_feasible: bool = False) -> Callable[[list[str]], Plan]:
    """`replan(devices)`: planner `planner` on those devices of `cluster` (plus `constraints`). With
    `require_feasible` an infeasible plan raises `RuntimeError` instead of being returned."""
    def replan(devices: list[str]) -> Plan:
        plan = get_planner(planner).plan(profile, cluster, cost_model, batch,
                                         constraints={**(constraints or {}), "devices": list(devices)})
        if require_feasible and not plan.feasible:
            raise RuntimeError(f"no feasible {planner} plan on {devices}: {plan.infeasible_reason}")
        return plan
    return replan


def default_replan(planner: str, model, cluster, batch: int, seq: int | None = None,
                   cost_model=None) -> Callable[[list[str]], Plan]:
    """`replan(devices)` for a real run of `model` (a `ModelSpec`): profiled here, SGD cost model unless given;
    an infeasible plan raises."""
    from edgepool.costmodel import CostModel
    from edgepool.profile import profile_model
    from edgepool.runtime.data import build_bundle

    profile = profile_model(build_bundle(model), batch=1, seq=seq)
    return replanner(planner, profile, cluster, cost_model or CostModel(optimizer="sgd"), batch,
                     require_feasible=True)
