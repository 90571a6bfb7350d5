"""PipeDream's planner: dynamic programming over layer boundaries and stage replication, for equal devices.

PipeDream (Narayanan et al., SOSP 2019) assumes every worker is the same. With T(i, j, r) the time of
layers [i, j) replicated on r workers, max(compute / r, weight sync / r) where sync = 4 (r - 1) |w| / (r B),
and C_j the activation transfer at the cut before j:

    A(j, n) = min( T(0, j, n),  min_{i < j, 1 <= r < n}  max(A(i, n - r), 2 C_i, T(i, j, r)) )

A(L, n) is the best bottleneck using n workers. Here the "same" worker is the cluster's median-speed device
and B the median link bandwidth: the homogeneous baseline. Its stages are then laid onto the real devices in
the cluster's order with equal shares, and the real cost model says how well that does.
"""
from __future__ import annotations

import statistics

import numpy as np

from edgepool.costmodel import device_speed
from edgepool.network import LinkCache
from edgepool.planners.base import (better, check_request, make_plan, microbatch_candidates, register,
                                    usable_devices)
from edgepool.planners.costing import byte_scale, device_mode, normalize_shares
from edgepool.plan import PipelinePlan, Plan, StagePlan


class PipeDreamPlanner:
    name = "pipedream"

    def plan(self, profile, cluster, cost_model, batch, objective="throughput", constraints=None) -> Plan:
        constraints = check_request(batch, objective, constraints, cluster)
        devices = usable_devices(cluster, constraints)
        links = LinkCache(cluster)
        L, N = len(profile), len(devices)
        ranked = sorted(devices, key=lambda d: device_speed(cluster, d, cost_model))
        ref_name = ranked[len(ranked) // 2]
        ref, mode = cluster.devices[ref_name], device_mode(cluster, ref_name)
        bandwidths = [links(a, b).bandwidth for a, b in zip(devices, devices[1:])] or [float("inf")]
        bw = statistics.median(bandwidths)
        mb = batch / min(N, batch)
        compute = np.array([cost_model.layers_time(profile, l, l + 1, ref, mb, "fwdbwd", mode=mode)
                            for l in range(L)])
        weights = np.array([cost_model.weights_bytes(profile, l, l + 1) for l in range(L)])
        P = np.concatenate([[0.0], np.cumsum(compute)])
        W = np.concatenate([[0.0], np.cumsum(weights)])
        cut = np.array([profile.layers[i - 1].output_bytes * mb / profile.batch * byte_scale(cost_model) / bw
                        if i > 0 else 0.0 for i in range(L)])
        r = np.arange(1, N + 1)

        def T(i, j):  # array over replication r = 1..N
            sync = 4 * (r - 1) * (W[j] - W[i]) / (r * bw)
            return np.maximum((P[j] - P[i]) / r, sync / r)

        inf = float("inf")
        A = np.full((L + 1, N + 1), inf)
        choice: dict[tuple[int, int], tuple[int, int]] = {}
        for j in range(1, L + 1):
            for n in range(1, N + 1):
                best, arg = T(0, j)[n - 1], (0, n)
                for i in range(1, j):
                    t = T(i, j)[: n - 1]  # r = 1..n-1
                    prev = A[i, n - 1:0:-1]  # A(i, n - r) for r = 1..n-1
                    v = np.maximum(np.maximum(prev, 2 * cut[i]), t)
                    k = int(np.argmin(v)) if len(v) else -1
                    if k >= 0 and v[k] < best:
                        best, arg = float(v[k]), (i, k + 1)
                A[j, n], choice[(j, n)] = best, arg
        n = int(np.argmin(A[L, 1:])) + 1
        ranges, j = [], L
        while j > 0:
            i, rep = choice[(j, n)]
            ranges.append((i, j, rep))
            j, n = i, n - rep
        ranges.reverse()
        stages, pos = [], 0
        for i, j, rep in ranges:
            group = devices[pos:pos + rep]
            pos += rep
            stages.append(StagePlan(layers=(i, j), devices=group, shares=normalize_shares([1.0] * len(group))))
        best = None
        for m in microbatch_candidates(batch, constraints):
            best = better(best, make_plan(self.name, profile, cluster, cost_model, batch, m,
                                          [PipelinePlan(stages=stages)], links=links,
                                          notes={"reference_device": ref_name, "reference_bandwidth": bw}))
        return best[0]


register("pipedream")(PipeDreamPlanner)
