"""Data parallelism across groups of close devices, one pipeline per group: the plans `dmp` chooses among and
that `hybrid` adds to its own one-pipeline candidates (so it is never below `dmp` on up to 16 devices).

Closeness: links at least as fast as the geometric mean of the slowest and fastest link join devices into
one group (zones on a gigabit switch behind a slower backbone come out as groups); where every link is
alike but devices have locations, devices within half the largest distance of each other are joined. The
batch is split across groups in proportion to each group's own throughput, in whole micro-batches; the k
fastest groups are tried for every k, since a slow backbone can make the cross-group all-reduce cost more
than the extra groups give.
"""
from __future__ import annotations

import math
from typing import Callable

import networkx as nx

from edgepool.cluster import Cluster
from edgepool.network import LinkCache
from edgepool.planners.base import make_plan, microbatch_candidates
from edgepool.planners.costing import Estimate
from edgepool.plan import PipelinePlan, Plan

# plan_group(batch, constraints) -> a one-pipeline Plan over constraints["devices"]
GroupPlanner = Callable[[int, dict], Plan]


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


def group_candidates(name: str, profile, cluster: Cluster, cost_model, batch: int, constraints: dict,
                     groups: list[list[str]], plan_group: GroupPlanner,
                     links: LinkCache) -> list[tuple[Plan, Estimate]]:
    """The fastest group alone, then the k fastest groups as k data-parallel pipelines (k >= 2), each a
    `make_plan` result labelled `name`; empty when no group can hold a split of the model."""
    alone = []
    for g in groups:  # each group on its own, with the whole batch: its speed and its preferred M
        p = plan_group(batch, {**constraints, "devices": g})
        if p.feasible:
            alone.append((p.predicted["throughput"], p.microbatches, g, p))
    if not alone:
        return []
    alone.sort(key=lambda t: -t[0])
    fastest = alone[0][3]
    found = [make_plan(name, profile, cluster, cost_model, batch, fastest.microbatches, fastest.pipelines,
                       notes={"clusters": [alone[0][2]]}, links=links)]
    allowed = microbatch_candidates(batch, constraints)
    for k in range(2, len(alone) + 1):
        chosen = alone[:k]
        for M in sorted({m for _, m, _, _ in chosen} | {max(m for _, m, _, _ in chosen)}):
            if M not in allowed or batch // M < k:
                continue
            units = split_units(batch // M, [t for t, *_ in chosen])
            pipelines = []
            for (_, _, g, _), u in zip(chosen, units):
                p = plan_group(u * M, {**constraints, "devices": g, "microbatches": M})
                if not p.feasible:
                    break
                pipelines.append(PipelinePlan(stages=p.stages, batch_share=u * M / batch))
            else:
                shares = [p.batch_share for p in pipelines]
                shares[-1] = 1.0 - sum(shares[:-1])
                for p, s in zip(pipelines, shares):
                    p.batch_share = s
                found.append(make_plan(name, profile, cluster, cost_model, batch, M, pipelines,
                                       notes={"clusters": [c[2] for c in chosen]}, links=links))
    return found
