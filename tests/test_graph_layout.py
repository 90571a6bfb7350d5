"""Graph-cut layout: each min-cut move against brute force, the full algorithm, the exact program, baselines."""
import itertools
import json

import networkx as nx
import numpy as np
import pytest

from edgepool.errors import SpecError
from edgepool.graph.graphcut import alpha_expansion, device_batch_move, expansion_move
from edgepool.graph.data import sensor_network
from edgepool.graph.layout import METHODS, compare_layouts, draw_layout, plan_layout, solve
from edgepool.graph.layout_baselines import (all_cloud, brute_force_layout, exact_layout, metis_layout,
                                             nearest_tier, random_layout)
from edgepool.graph.layout_cost import (CELLULAR_ACCESS_PER_GB, GNNShape, TierPrices, approximation_factor,
                                        build_problem, layout_cost, make_tier_network)

PRICES = [TierPrices(), TierPrices(access_per_gb=CELLULAR_ACCESS_PER_GB)]


def tiny(n, seed, prices=None, radius=0.5, devices=3):
    """A tiny graph on 2 edge servers: K = 4 candidates per vertex (home device, 2 edge servers, cloud)."""
    g = nx.random_geometric_graph(n, radius, seed=seed)
    net = make_tier_network(devices, 2, seed=seed)
    return build_problem(g, net, prices or TierPrices(), GNNShape(in_dim=32, hidden_dims=(16, 16)))


def best_subset(p, choice, movable, col):
    """Brute force over every subset of `movable` switching to its candidate column `col`: the lowest total cost."""
    movable = np.asarray(movable, dtype=np.int64)
    bits = np.array(list(itertools.product((0, 1), repeat=len(movable))), dtype=bool).reshape(2 ** len(movable), -1)
    layouts = np.repeat(np.asarray(choice)[None], len(bits), axis=0)
    for k, v in enumerate(movable):
        layouts[bits[:, k], v] = col
    return float(p.energies(layouts).min())


def movable_toward(p, choice, alpha):
    col = p.column_of(alpha)
    return [v for v in range(p.n) if p.cand[v, col] == alpha and choice[v] != col], col


def test_candidates_are_home_device_every_edge_server_and_cloud():
    p = tiny(8, 3)
    D, E = p.network.n_devices, p.network.n_edge
    assert p.k == E + 2
    assert np.array_equal(p.cand[:, 0], p.home) and np.all(p.cand[:, -1] == p.network.cloud)
    assert np.all(p.cand[:, 1:E + 1] == D + np.arange(E))
    for col in range(p.k):
        assert np.allclose(p.unary[:, col], sum(p.unary_at(p.cand[:, col])))
    # a foreign edge server costs the raw-data path device -> home edge -> backhaul on top of the home one
    foreign = np.where(p.home_edge == D, D + 1, D)
    extra = p.shape.raw_bytes * (p.dist[p.home, foreign] - p.dist[p.home, p.home_edge])
    assert np.all(extra > 0)
    assert np.allclose(sum(p.unary_at(foreign)) - sum(p.unary_at(p.home_edge)), extra)
    assert np.array_equal(p.choice_of(p.locations(np.arange(p.n) % p.k)), np.arange(p.n) % p.k)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prices", PRICES, ids=["local", "cellular"])
def test_expansion_move_equals_brute_force(seed, prices):
    p = tiny(7 + seed % 3, seed, prices)
    rng = np.random.default_rng(seed)
    for trial in range(3):
        choice = rng.integers(0, p.k, p.n)
        before = p.energy(choice)
        for alpha in range(p.network.n_locations):
            movable, col = movable_toward(p, choice, alpha)
            best = best_subset(p, choice, movable, col)
            r = expansion_move(p, choice, alpha)
            # the min cut's value is the best move's cost exactly, and the move applied attains it
            assert r.cut_energy - r.current_energy == pytest.approx(best - before, rel=1e-7, abs=1e-9 * before)
            assert p.energy(r.choice) == pytest.approx(best, rel=1e-9)
            assert np.all(p.locations(r.choice)[r.moved] == alpha)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prices", PRICES, ids=["local", "cellular"])
def test_device_batch_move_equals_brute_force(seed, prices):
    p = tiny(9, seed + 10, prices, radius=0.3, devices=6)
    home = p.home
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, p.k, p.n)
    assert sorted(np.concatenate(p.device_batches).tolist()) == list(range(p.n))
    for batch in p.device_batches:
        inside = np.zeros(p.n, dtype=bool)
        inside[batch] = True
        u, v = p.edges[:, 0], p.edges[:, 1]
        assert not np.any(inside[u] & inside[v] & (home[u] != home[v]))  # no edge between two devices of a batch
        movable = [v for v in batch if choice[v] != 0]
        best = best_subset(p, choice, movable, 0)
        r = device_batch_move(p, choice, batch)
        assert p.energy(r.choice) == pytest.approx(best, rel=1e-9)
        # the same as the per-device expansions one after another
        seq = choice
        for d in np.unique(home[batch]):
            seq = expansion_move(p, seq, int(d)).choice
        assert p.energy(seq) == pytest.approx(best, rel=1e-9)


def assert_expansion_local_optimum(p, choice):
    e = p.energy(choice)
    for alpha in range(p.network.n_locations):
        movable, col = movable_toward(p, choice, alpha)
        assert best_subset(p, choice, movable, col) >= e * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("moves", ["batched", "location"])
def test_alpha_expansion_monotone_and_local_optimum(seed, moves):
    p = tiny(8, seed + 20)
    start = np.random.default_rng(seed).integers(0, p.k, p.n)
    r = alpha_expansion(p, init=start, moves=moves)
    assert r.converged
    assert all(b <= a * (1 + 1e-12) for a, b in zip(r.history, r.history[1:]))
    assert r.energy <= p.energy(start) * (1 + 1e-12)
    assert r.energy == pytest.approx(p.energy(r.choice))
    assert_expansion_local_optimum(p, r.choice)


def test_general_metric_still_reaches_a_local_optimum():
    """With Euclidean path prices (a metric that is not our tree) every move stays exact: expansions are submodular
    for any metric and a device batch is a union of independent expansions."""
    p = tiny(8, 5)
    xy = p.network.location_pos()
    p.dist = np.linalg.norm(xy[:, None] - xy[None], axis=2) * 1e-9
    p.unary = np.stack([sum(p.unary_at(p.cand[:, t])) for t in range(p.k)], axis=1)
    r = alpha_expansion(p, init=np.full(p.n, p.k - 1))
    assert_expansion_local_optimum(p, r.choice)


@pytest.mark.parametrize("seed", range(4))
def test_exact_program_matches_enumeration(seed):
    p = tiny(5 + seed % 3, seed + 30)
    tiers, best = brute_force_layout(p)
    ex = exact_layout(p)
    assert ex.optimal
    assert ex.energy == pytest.approx(best, rel=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_graphcut_within_2c_of_exact(seed):  # 3 edge servers: 5 candidates per vertex
    g = sensor_network(25, seed, mean_degree=6)
    p = build_problem(g, make_tier_network(5, 3, seed))
    gc, ex = alpha_expansion(p), exact_layout(p)
    assert ex.energy <= gc.energy * (1 + 1e-7)
    assert gc.energy <= approximation_factor(p) * ex.energy
    assert gc.energy <= 1.05 * ex.energy  # in practice far inside the bound


def test_baselines_are_valid_and_costs_add_up():
    g = sensor_network(300, 1)
    p = build_problem(g, make_tier_network(8, 4, 1))
    for loc in (all_cloud(p), nearest_tier(p), metis_layout(p), random_layout(p, 3)):
        assert loc.shape == (p.n,) and loc.min() >= 0 and loc.max() < p.network.n_locations
        c = layout_cost(p, loc)
        assert c.total == pytest.approx(c.compute + c.storage + c.communication)
    rnd = random_layout(p, 3)
    assert np.all((p.cand == rnd[:, None]).any(axis=1))  # random stays among the candidates
    metis = metis_layout(p)
    assert np.all((p.cand == metis[:, None]).any(axis=1))  # so does METIS, foreign edge servers included
    assert np.array_equal(p.locations(p.choice_of(metis)), metis)
    assert layout_cost(p, p.locations(alpha_expansion(p).choice)).total <= layout_cost(p, nearest_tier(p)).total


@pytest.mark.parametrize("shape", [GNNShape(), GNNShape(in_dim=128, hidden_dims=(64, 64))], ids=["gcn", "wide"])
@pytest.mark.parametrize("prices", PRICES, ids=["local", "cellular"])
def test_graphcut_no_worse_than_any_baseline_midsize(shape, prices):
    g = sensor_network(400, 4)
    p = build_problem(g, make_tier_network(8, 4, 4), prices, shape)
    ours = layout_cost(p, p.locations(alpha_expansion(p).choice)).total
    for name, loc in [("metis", metis_layout(p)), ("nearest-tier", nearest_tier(p)), ("all-cloud", all_cloud(p)),
                      ("random", random_layout(p, 0))]:
        assert ours <= layout_cost(p, loc).total * (1 + 1e-9), name


def test_default_shape_is_the_area_gcn():
    assert GNNShape() == GNNShape(in_dim=32, hidden_dims=(64, 4))


def test_layout_is_json_and_every_method_runs():
    g = sensor_network(30, 2, mean_degree=6)
    net = make_tier_network(5, 3, 2)
    for m in METHODS:
        lay = plan_layout(g, net, method=m)
        d = json.loads(json.dumps(lay.to_dict()))
        assert sum(d["tier_counts"].values()) == 30 and "modelled" in d["kind"]
        assert len(d["location_names"]) == 30


def test_bad_input_raises_spec_error():
    g = sensor_network(30, 2)
    net = make_tier_network(5, 3, 2)
    with pytest.raises(SpecError, match="method"):
        plan_layout(g, net, method="bogus")
    with pytest.raises(SpecError, match="graph size"):
        exact_layout(build_problem(sensor_network(100, 1), net))
    with pytest.raises(SpecError, match="pos"):
        build_problem(nx.path_graph(4), net)
    with pytest.raises(SpecError, match="access_per_gb"):
        build_problem(g, net, TierPrices(access_per_gb=-1.0))
    with pytest.raises(SpecError, match="moves"):
        alpha_expansion(build_problem(g, net), moves="swap")
    with pytest.raises(SpecError, match="init"):
        alpha_expansion(build_problem(g, net), init=np.full(30, 5))  # 3 edge servers: columns 0..4
    with pytest.raises(SpecError, match="small_n"):
        compare_layouts(n=100, small_n=500)


def test_compare_and_draw(tmp_path):
    r = compare_layouts(n=400, n_edge=4, small_graphs=2, small_n=12, updates=3)
    m = r["metrics"]
    for key in ("layout_cost_reduction_vs_all_cloud", "layout_gap_vs_exact", "layout_gap_vs_exact_max",
                "incremental_speedup_vs_recompute", "incremental_cost_gap", "layout_cost_reduction_vs_metis",
                "layout_cost_reduction_vs_nearest_tier", "layout_cost_reduction_vs_random"):
        assert np.isfinite(m[key])
    assert m["layout_gap_vs_exact"] >= -1e-7 and m["layout_cost_reduction_vs_random"] > 0
    json.dumps(r)
    g = sensor_network(400, 0)
    net = make_tier_network(8, 4, 0)
    lay = solve(build_problem(g, net), "graphcut")
    path = draw_layout(g, net, lay, tmp_path / "layout.png", comparison=r)
    assert path.exists() and path.stat().st_size > 0
