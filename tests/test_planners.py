"""Planners: the hybrid DP against brute force, memory feasibility, registry and plan validity."""
from __future__ import annotations

import itertools
import random

import pytest

from edgepool.catalog import get_device
from edgepool.cluster import Cluster, load_cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.plan import PipelinePlan, Plan, StagePlan, plan_from_dict
from edgepool.planners import get_planner, planner_names
from edgepool.planners import hybrid as H
from edgepool.planners.base import make_plan
from edgepool.planners.costing import LinkCache, proportional_shares
from edgepool.planners.groups import close_groups, split_units
from edgepool.profile import LayerProfile, ModelProfile
from edgepool.simulator import simulate

KINDS = ["jetson-agx-orin", "jetson-orin-nano", "jetson-tx2", "rpi5"]


def toy_profile(n: int, seed: int = 0) -> ModelProfile:
    rng = random.Random(seed)
    layers = []
    for i in range(n):
        f = rng.uniform(0.2, 2.0) * 1e9
        layers.append(LayerProfile(name=str(i), fwd_flops=f, bwd_flops=2 * f, param_bytes=rng.randint(1, 40) * 10**6,
                                   output_bytes=rng.randint(1, 20) * 10**5, saved_bytes=rng.randint(1, 30) * 10**6,
                                   input_bytes=rng.randint(1, 20) * 10**5))
    return ModelProfile(model="toy", batch=1, seq=None, layers=layers)


def toy_cluster(kinds, bandwidth=100e6 / 8, memory=None) -> Cluster:
    devs = []
    for i, k in enumerate(kinds):
        update = {"name": f"{k}-{i}"}
        if memory:
            update["memory_bytes"] = memory[i]
        devs.append(get_device(k).model_copy(update=update))
    return Cluster.uniform(devs, bandwidth=bandwidth, latency_s=1e-3, name="toy")


def brute_force_bottleneck(tables, order, batch, M, links):
    """min over every split of the layers into q ranges and of the order into q consecutive blocks (the rest
    unused) of the largest stage/cut cost, using the DP's own per-block costs."""
    L, N = tables.L, len(order)
    BW, LAT, CAP, MED = H._link_matrices(order, links)
    mb = batch / M

    def block(k, g):
        counts = {}
        for n in order[k:k + g]:
            counts[tables.class_of[n]] = counts.get(tables.class_of[n], 0) + 1
        worst_bw, worst_lat, worst_med = float("inf"), 0.0, None
        for a in range(k, k + g):
            for b in range(a + 1, k + g):
                if BW[a, b] < worst_bw:
                    worst_bw, worst_med = BW[a, b], MED[a][b]
                worst_lat = max(worst_lat, LAT[a, b])
        out = None
        if k + g < N:
            out = (float(BW[k:k + g, k + g].min()), float(LAT[k:k + g, k + g].max()), float(CAP[k:k + g, k + g].min()))
        cap = tables.cluster.medium_capacity(worst_med) if g > 1 else None
        return H._block_costs(tables, counts, g, mb, M, worst_bw, worst_lat, cap, out)

    best = float("inf")
    for q in range(1, min(L, N) + 1):
        for cuts in itertools.combinations(range(1, L), q - 1):
            bounds = (0, *cuts, L)
            for sizes in itertools.product(range(1, N + 1), repeat=q):
                if sum(sizes) > N:
                    continue
                worst, k = 0.0, 0
                for s in range(q):
                    total, qmax, _ = block(k, sizes[s])
                    i, j = bounds[s], bounds[s + 1]
                    if qmax[i, j] < min(q - s, M):
                        worst = float("inf")
                        break
                    worst = max(worst, float(total[i, j]))
                    k += sizes[s]
                best = min(best, worst)
    return best


@pytest.mark.parametrize("seed,M,memory", [(0, 1, None), (1, 4, None), (2, 2, [3 * 2**30, 1 * 2**30, 2**30, 2**30])])
def test_dp_matches_brute_force(seed, M, memory):
    prof = toy_profile(5, seed)
    cl = toy_cluster(KINDS, memory=memory)
    cm = CostModel(optimizer="sgd-momentum")
    links = LinkCache(cl)
    tables = H.Tables(prof, cl, cm, cl.names)
    for order in H.device_orders(cl, cm, cl.names)[:2]:
        results = H.search(tables, order, 8, M, links)
        dp_best = min((r.bottleneck for r in results), default=float("inf"))
        bf = brute_force_bottleneck(tables, order, 8, M, links)
        assert dp_best == pytest.approx(bf, rel=1e-5)
        for r in results:  # every reconstructed plan covers the layers and uses each device once
            assert r.stages[0].start == 0 and r.stages[-1].end == len(prof)
            assert all(a.end == b.start for a, b in zip(r.stages, r.stages[1:]))


def test_hybrid_close_to_brute_force_over_all_assignments():
    """Over every assignment of 3 devices to ordered stages (any subset, any order) and every layer split, with
    proportional shares and every micro-batch count: the hybrid plan's estimate is near the best."""
    prof = toy_profile(4, seed=3)
    cl = toy_cluster(KINDS[:3])
    cm = CostModel()
    batch = 4
    names = cl.names
    best = 0.0
    for q in range(1, 4):
        for cuts in itertools.combinations(range(1, 4), q - 1):
            bounds = (0, *cuts, 4)
            for assign in itertools.product(range(q + 1), repeat=3):  # stage index, or q = unused
                groups = [[n for n, a in zip(names, assign) if a == s] for s in range(q)]
                if any(not g for g in groups):
                    continue
                for M in (1, 2, 4):
                    stages = [StagePlan(layers=(bounds[s], bounds[s + 1]), devices=g, shares=proportional_shares(
                        prof, cm, cl, g, bounds[s], bounds[s + 1], batch / M)) for s, g in enumerate(groups)]
                    _, est = make_plan("bf", prof, cl, cm, batch, M, [PipelinePlan(stages=stages)])
                    if est.feasible:
                        best = max(best, est.throughput)
    plan = get_planner("hybrid").plan(prof, cl, cm, batch)
    assert plan.feasible
    assert plan.predicted["throughput"] >= 0.9 * best


def test_tables_memory_matches_cost_model():
    prof = toy_profile(6, seed=4)
    cl = toy_cluster(KINDS)
    cm = CostModel(runtime_overhead_bytes=12345)
    tables = H.Tables(prof, cl, cm, cl.names)
    for i, j, x, q in [(0, 6, 1.0, 1), (1, 3, 2.5, 3), (4, 5, 0.5, 2)]:
        ours = tables.A0[i, j] + x / prof.batch * (tables.IO[i, j] + q * tables.S[i, j])
        assert ours == pytest.approx(cm.training_memory(prof, i, j, x, in_flight=q), rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_no_returned_plan_exceeds_memory(seed):
    rng = random.Random(seed)
    prof = toy_profile(6, seed)
    memory = [rng.choice([1, 2, 3]) * 2**30 for _ in KINDS]
    cl = toy_cluster(KINDS, memory=memory)
    cm = CostModel()
    for name in planner_names():
        plan = get_planner(name).plan(prof, cl, cm, 8)
        report = simulate(plan, cl, cm, prof)
        if plan.feasible:
            assert report.feasible, (name, report.infeasible_reason)
            for d, stats in report.per_device.items():
                assert stats.peak_memory_bytes <= cl.devices[d].memory_bytes
        else:
            assert plan.infeasible_reason


def test_dp_says_when_the_model_does_not_fit_but_hybrid_splits_it():
    prof = toy_profile(6, seed=5)
    cm = CostModel()
    whole = cm.training_memory(prof, 0, 6, 1.0)
    cl = toy_cluster(KINDS, memory=[int(whole * 0.7)] * 4)
    dp = get_planner("dp").plan(prof, cl, cm, 8)
    assert not dp.feasible and "does not fit" in dp.infeasible_reason
    hybrid = get_planner("hybrid").plan(prof, cl, cm, 8)
    assert hybrid.feasible and len(hybrid.stages) >= 2
    nothing = toy_cluster(KINDS, memory=[2**20] * 4)
    assert not get_planner("hybrid").plan(prof, nothing, cm, 8).feasible


def test_every_planner_returns_a_valid_plan_with_prediction():
    prof = toy_profile(6, seed=6)
    cl = toy_cluster(KINDS, bandwidth=1e9 / 8)
    cm = CostModel()
    results = {}
    for name in planner_names():
        plan = get_planner(name).plan(prof, cl, cm, 8)
        assert isinstance(plan, Plan) and plan.planner == name
        assert plan_from_dict(plan.model_dump(), cluster=cl, num_layers=6).planner == name
        assert plan.predicted["throughput"] > 0
        report = simulate(plan, cl, cm, prof)
        assert report.throughput == pytest.approx(plan.predicted["throughput"], rel=0.35)
        results[name] = report.throughput
    baselines = [results[b] for b in ("dp", "dp-proportional", "gpipe", "pipedream")]
    assert results["hybrid"] >= 0.99 * max(baselines)


def test_registry_and_bad_input():
    assert {"dp", "dp-proportional", "gpipe", "pipedream", "hybrid", "dmp"} <= set(planner_names())
    with pytest.raises(SpecError, match="planner"):
        get_planner("nope")
    prof, cl = toy_profile(3), toy_cluster(KINDS[:2])
    with pytest.raises(SpecError, match="batch"):
        get_planner("hybrid").plan(prof, cl, CostModel(), 0)
    with pytest.raises(SpecError, match="constraints"):
        get_planner("hybrid").plan(prof, cl, CostModel(), 4, constraints={"colour": 1})


def test_dmp_clusters_site_rooms():
    cl = load_cluster("site64")
    groups = close_groups(cl, cl.names)
    assert len(groups) == 4 and all(len(g) == 16 for g in groups)
    assert {cl.zones[d] for d in groups[0]} == {"room-a"}
    assert split_units(10, [3.0, 1.0, 1.0]) == [6, 2, 2]
    prof = toy_profile(5, seed=7)
    plan = get_planner("dmp").plan(prof, cl, CostModel(), 16)
    assert plan.feasible and sum(p.batch_share for p in plan.pipelines) == pytest.approx(1.0)
    for pipe in plan.pipelines:  # every pipeline stays inside one room
        assert len({cl.zones[d] for d in pipe.devices}) == 1
