"""DMP-style planning: cluster devices that are close, plan each cluster with `hybrid` (one pipeline), and run
data parallelism across clusters (one pipeline per cluster, gradients all-reduced across pipelines).

The clustering and the combinations live in `planners.groups`; dmp keeps the one with the best closed-form
estimate (the fastest cluster alone is one of them). `hybrid` replays the same combinations among its own.
"""
from __future__ import annotations

from edgepool.network import LinkCache
from edgepool.planners.base import better, check_request, infeasible_plan, register, usable_devices
from edgepool.planners.groups import close_groups, group_candidates
from edgepool.planners.hybrid import HybridPlanner
from edgepool.plan import Plan


class DMPPlanner:
    name = "dmp"

    def plan(self, profile, cluster, cost_model, batch, objective="throughput", constraints=None) -> Plan:
        constraints = check_request(batch, objective, constraints, cluster)
        devices = usable_devices(cluster, constraints)
        links = LinkCache(cluster)
        hybrid = HybridPlanner()

        def plan_group(b: int, cons: dict) -> Plan:
            return hybrid.plan_one_pipeline(profile, cluster, cost_model, b, objective, cons)

        found = group_candidates(self.name, profile, cluster, cost_model, batch, constraints,
                                 close_groups(cluster, devices, links), plan_group, links)
        if not found:
            return infeasible_plan(self.name, profile, cluster, cost_model, batch,
                                   "no cluster of close devices can hold a split of the model", devices)
        best = None
        for candidate in found:
            best = better(best, candidate)
        return best[0]


register("dmp")(DMPPlanner)
