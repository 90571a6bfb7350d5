"""Data parallelism over every device: each holds the whole model and takes a share of the batch.

`dp` splits the batch equally (the conventional baseline); `dp-proportional` splits it in proportion to each
device's speed on the whole model. The batch is cut into the fewest micro-batches (gradient accumulation)
that fit every device's memory; where even one sample per device does not fit, the plan says so.
"""
from __future__ import annotations

from edgepool.network import LinkCache
from edgepool.planners.base import (better, check_request, infeasible_plan, make_plan, microbatch_candidates,
                                    register, usable_devices)
from edgepool.planners.costing import normalize_shares, proportional_shares
from edgepool.plan import PipelinePlan, Plan, StagePlan


class DataParallelPlanner:
    def __init__(self, proportional: bool = False):
        self.proportional = proportional
        self.name = "dp-proportional" if proportional else "dp"

    def plan(self, profile, cluster, cost_model, batch, objective="throughput", constraints=None) -> Plan:
        constraints = check_request(batch, objective, constraints, cluster)
        devices = usable_devices(cluster, constraints)
        links = LinkCache(cluster)
        L = len(profile)
        best = None
        for m in microbatch_candidates(batch, constraints):
            mb = batch / m
            if self.proportional:
                shares = proportional_shares(profile, cost_model, cluster, devices, 0, L, mb)
            else:
                shares = normalize_shares([1.0] * len(devices))
            stage = StagePlan(layers=(0, L), devices=devices, shares=shares)
            candidate = make_plan(self.name, profile, cluster, cost_model, batch, m,
                                  [PipelinePlan(stages=[stage])], notes={"shares": "proportional" if
                                                                         self.proportional else "equal"},
                                  links=links)
            best = better(best, candidate)
            if candidate[1].feasible:  # fewest micro-batches that fit: more only adds per-step overhead
                break
        plan = best[0] if best else infeasible_plan(self.name, profile, cluster, cost_model, batch,
                                                    "no micro-batch count divides the batch", devices)
        if not plan.feasible:
            plan.infeasible_reason = ("the whole model does not fit on every device even at the smallest "
                                      f"micro-batch: {plan.infeasible_reason}")
        return plan


register("dp")(lambda: DataParallelPlanner(proportional=False))
register("dp-proportional")(lambda: DataParallelPlanner(proportional=True))
