"""DMP-style planning: cluster devices that are close, plan each cluster with `hybrid`, and run data
parallelism across clusters (one pipeline per cluster, gradients all-reduced across pipelines).

Closeness: links at least as fast as the geometric mean of the slowest and fastest link join devices into
one cluster (zones on a gigabit switch behind a slower backbone come out as clusters); where every link is
alike but devices have locations, devices within half the largest distance of each other are joined. The
batch is split across clusters in proportion to each cluster's own throughput, in whole micro-batches; the
planner also tries using only the k fastest clusters, since a slow backbone can make the cross-cluster
all-reduce cost more than the extra clusters give.
"""
from __future__ import annotations

import math

import networkx as nx

from edgepool.cluster import Cluster
from edgepool.planners.base import (better, check_request, infeasible_plan, make_plan, microbatch_candidates,
                                    register, usable_devices)
from edgepool.planners.costing import LinkCache
from edgepool.planners.hybrid import HybridPlanner
from edgepool.plan import PipelinePlan, Plan


def close_groups(cluster: Cluster, devices: list[str], links: LinkCache | None = None) -> list[list[str]]:
    """Devices joined by fast links (or, with uniform links, by location), as lists in cluster order."""
    links = links or LinkCache(cluster)
    pairs = [(a, b, links(a, b)) for i, a in enumerate(devices) for b in devices[i + 1:]]
    if not pairs:
        return [list(devices)]
    bws = [l.bandwidth for _, _, l in pairs]
    lo, hi = min(bws), max(bws)
    graph = nx.Graph()
    graph.add_nodes_from(devices)
    if hi > lo * 1.01:
        threshold = math.sqrt(lo * hi)
        graph.add_edges_from((a, b) for a, b, l in pairs if l.bandwidth >= threshold)
    elif all(d in cluster.locations for d in devices):
        dist = {(a, b): math.dist(cluster.locations[a], cluster.locations[b]) for a, b, _ in pairs}
        far = max(dist.values())
        graph.add_edges_from((a, b) for (a, b), d in dist.items() if far == 0 or d <= far / 2)
    else:
        graph.add_edges_from((a, b) for a, b, _ in pairs)
    order = {d: i for i, d in enumerate(devices)}
    groups = [sorted(c, key=order.get) for c in nx.connected_components(graph)]
    return sorted(groups, key=lambda g: order[g[0]])


def split_units(units: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of `units` whole micro-batch units by weight, each part at least 1."""
    total = sum(weights)
    raw = [units * w / total for w in weights]
    parts = [max(1, int(r)) for r in raw]
    while sum(parts) > units:
        i = max((k for k in range(len(parts)) if parts[k] > 1), key=lambda k: parts[k] - raw[k])
        parts[i] -= 1
    while sum(parts) < units:
        i = max(range(len(parts)), key=lambda k: raw[k] - parts[k])
        parts[i] += 1
    return parts


class DMPPlanner:
    name = "dmp"

    def plan(self, profile, cluster, cost_model, batch, objective="throughput", constraints=None) -> Plan:
        constraints = check_request(batch, objective, constraints, cluster)
        devices = usable_devices(cluster, constraints)
        links = LinkCache(cluster)
        hybrid = HybridPlanner()
        groups = close_groups(cluster, devices, links)
        # each cluster on its own, with the whole batch: its speed and its preferred micro-batch count
        alone = []
        for g in groups:
            p = hybrid.plan(profile, cluster, cost_model, batch, objective,
                            {**constraints, "devices": g})
            if p.feasible:
                alone.append((p.predicted["throughput"], p.microbatches, g, p))
        if not alone:
            return infeasible_plan(self.name, profile, cluster, cost_model, batch,
                                   "no cluster of close devices can hold a split of the model", devices)
        alone.sort(key=lambda t: -t[0])
        best = None
        fastest = alone[0][3]
        best = better(best, make_plan(self.name, profile, cluster, cost_model, batch, fastest.microbatches,
                                      fastest.pipelines, notes={"clusters": [alone[0][2]]}, links=links))
        allowed = microbatch_candidates(batch, constraints)
        for k in range(2, len(alone) + 1):
            chosen = alone[:k]
            for M in sorted({m for _, m, _, _ in chosen} | {max(m for _, m, _, _ in chosen)}):
                if M not in allowed or batch // M < k:
                    continue
                units = split_units(batch // M, [t for t, *_ in chosen])
                pipelines = []
                for (_, _, g, _), u in zip(chosen, units):
                    p = hybrid.plan(profile, cluster, cost_model, u * M, objective,
                                    {**constraints, "devices": g, "microbatches": M})
                    if not p.feasible:
                        break
                    pipelines.append(PipelinePlan(stages=p.stages, batch_share=u * M / batch))
                else:
                    shares = [p.batch_share for p in pipelines]
                    shares[-1] = 1.0 - sum(shares[:-1])
                    for p, s in zip(pipelines, shares):
                        p.batch_share = s
                    best = better(best, make_plan(self.name, profile, cluster, cost_model, batch, M, pipelines,
                                                  notes={"clusters": [c[2] for c in chosen]}, links=links))
        return best[0]


register("dmp")(DMPPlanner)
