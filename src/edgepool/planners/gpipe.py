"""GPipe: one device per stage, an equal number of layers per stage, devices in the cluster's order.

The micro-batch count is the one (among those dividing the batch) with the best predicted throughput,
GPipe's schedule (all forwards, then all backwards) keeps every micro-batch's activations in flight.
"""
from __future__ import annotations

from edgepool.network import LinkCache
from edgepool.planners.base import (better, check_request, make_plan, microbatch_candidates, register,
                                    usable_devices)
from edgepool.plan import PipelinePlan, Plan, StagePlan


def equal_layer_ranges(num_layers: int, stages: int) -> list[tuple[int, int]]:
    base, extra = divmod(num_layers, stages)
    ranges, start = [], 0
    for s in range(stages):
        end = start + base + (1 if s < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


class GPipePlanner:
    name = "gpipe"

    def plan(self, profile, cluster, cost_model, batch, objective="throughput", constraints=None) -> Plan:
        constraints = check_request(batch, objective, constraints, cluster)
        devices = usable_devices(cluster, constraints)
        L = len(profile)
        n = min(len(devices), L, constraints.get("max_stages") or len(devices))
        stages = [StagePlan(layers=r, devices=[d], shares=[1.0])
                  for r, d in zip(equal_layer_ranges(L, n), devices[:n])]
        links = LinkCache(cluster)
        best = None
        for m in microbatch_candidates(batch, constraints):
            best = better(best, make_plan(self.name, profile, cluster, cost_model, batch, m,
                                          [PipelinePlan(stages=stages)], schedule=constraints.get("schedule", "gpipe"),
                                          links=links))
        return best[0]


register("gpipe")(GPipePlanner)
