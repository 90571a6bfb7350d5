"""Fograph's distributed GNN inference: graphs load right, halos make a partitioned run equal the whole-graph
model exactly (GCN, GraphSAGE, GAT; every plan, and random owners), the views' exchange lists pair up, the
codecs stay within half a quantization step, the planner follows speeds and picks its best mix, and the real
node processes (loopback, and the emulated testbed when it can run) reproduce the in-process run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepool.cluster import load_cluster
from edgepool.errors import SpecError
from edgepool.graph.compression import HEADER_BYTES, Codec, compression_ratio
from edgepool.graph.data import GRAPHS, load_graph
from edgepool.graph.fog import fog_plans, fog_setup, measure_costs, run_fog
from edgepool.graph.halo import build_views, partitioned_forward
from edgepool.graph.models import GNN, edge_weights, train_gnn
from edgepool.graph.partition import (FogCosts, FogPlan, cloud_plan, even_partition, fograph_partition,
                                      metis_parts, nearest_homes, plan_fograph)

CLUSTER = Path(__file__).resolve().parents[1] / "examples" / "clusters" / "fog-graph.yaml"
FEATURES = 16
# fixed planner inputs (a measured FogCosts would make the plans depend on this host's speed)
COSTS = FogCosts(seconds_per_vertex=1e-6, bytes_per_vertex=FEATURES * 4, lan_bytes_per_s=12.5e6)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def task():
    return load_graph("sensor", 400, features=FEATURES, seed=0)


@pytest.fixture(scope="module")
def setup():
    return fog_setup(load_cluster(str(CLUSTER)))


@pytest.fixture(scope="module")
def trained(task):
    return {kind: train_gnn(task, kind, hidden=16, epochs=5, seed=0) for kind in ("gcn", "sage", "gat")}


def _random_plan(task, k: int, seed: int) -> FogPlan:
    """Owners and homes drawn at random over k nodes: many cut edges, many raw transfers."""
    rng = np.random.default_rng(seed)
    n = task.num_nodes
    return FogPlan("random", [f"n{i}" for i in range(k)], rng.integers(0, k, n), rng.integers(0, k, n), [1.0] * k)


@pytest.fixture(scope="module")
def plans(task, setup):
    out = dict(fog_plans(task, setup, COSTS))
    out["random-3"] = _random_plan(task, 3, seed=1)
    out["random-4"] = _random_plan(task, 4, seed=2)
    return out


# ----------------------------------------------------------------------------- 1. halos: exact equality


@pytest.mark.parametrize("plan_name", ["fograph", "even-fog", "cloud", "random-3", "random-4"])
@pytest.mark.parametrize("kind", ["gcn", "sage", "gat"])
def test_partitioned_forward_equals_the_whole_graph_model_exactly(task, trained, plans, kind, plan_name):
    model = trained[kind]
    plan = plans[plan_name]
    reference = model.predict(task.x)
    out = partitioned_forward(model.model, task.x, model.edge_index, model.edge_weight, plan, Codec("none"))
    assert out.shape == reference.shape
    assert torch.equal(out, reference), f"{kind}/{plan_name}: max diff {(out - reference).abs().max()}"


@pytest.mark.parametrize("kind", ["gcn", "sage", "gat"])
def test_three_layers_on_a_real_graph_agree_to_the_last_bits(kind):
    """Halos of halos are not needed: each layer's halo exchange refreshes the rows the next layer reads.
    Karate's 34 input features make the BLAS kernel of a [rows, 34] x [34, 8] product depend on the row
    count (an ulp apart), so here equality is to float32 rounding, not bit for bit."""
    karate = load_graph("karate")
    model = train_gnn(karate, kind, hidden=8, layers=3, epochs=3)
    plan = _random_plan(karate, 3, seed=5)
    out = partitioned_forward(model.model, karate.x, model.edge_index, model.edge_weight, plan)
    reference = model.predict(karate.x)
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6)
    # a wrong halo is far bigger than rounding: the same plan without its cut edges
    owner = torch.as_tensor(plan.owner)
    src, dst = model.edge_index
    inside = owner[src] == owner[dst]
    weight = None if model.edge_weight is None else model.edge_weight[inside]
    cut = model.model.eval()(karate.x, model.edge_index[:, inside], weight).detach()
    assert not torch.allclose(cut, reference, rtol=1e-5, atol=1e-6)


def test_a_wrong_halo_would_show(task, trained, plans):
    """The equality test can fail: dropping one cut edge's weight on its owner changes the output."""
    model = trained["gcn"]
    plan = plans["random-3"]
    weight = model.edge_weight.clone()
    src, dst = model.edge_index
    cut = int(torch.nonzero(torch.as_tensor(plan.owner)[src] != torch.as_tensor(plan.owner)[dst])[0])
    weight[cut] = 0.0
    out = partitioned_forward(model.model, task.x, model.edge_index, weight, plan)
    assert not torch.equal(out, model.predict(task.x))


# ----------------------------------------------------------------------------- 2. views


def _global(view, local_ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([view.owned, view.halo])[local_ids]


@pytest.mark.parametrize("plan_name", ["fograph", "even-fog", "cloud", "random-3", "random-4"])
def test_views_partition_the_vertices_and_their_exchange_lists_pair_up(task, trained, plans, plan_name):
    plan = plans[plan_name]
    edge_index, edge_weight = trained["gcn"].edge_index, trained["gcn"].edge_weight  # with self-loops
    views = build_views(edge_index, edge_weight, plan)
    n, k = task.num_nodes, len(plan.nodes)
    owner, home = torch.as_tensor(plan.owner), torch.as_tensor(plan.home)
    src, dst = edge_index
    assert [v.rank for v in views] == list(range(k))

    # every vertex owned exactly once, by its plan owner, ascending
    every = torch.cat([v.owned for v in views])
    assert torch.equal(torch.sort(every).values, torch.arange(n))
    for v in views:
        assert torch.equal(v.owned, torch.nonzero(owner == v.rank).flatten())
        assert torch.equal(v.halo, torch.sort(v.halo).values)

    total_edges = 0
    for v in views:
        r = v.rank
        mine = owner[dst] == r
        # halo: the sources of the owned vertices' in-edges that are owned elsewhere
        expected_halo = sorted(set(src[mine].tolist()) - set(v.owned.tolist()))
        assert v.halo.tolist() == expected_halo
        assert not set(v.halo.tolist()) & set(v.owned.tolist())
        # edges: every in-edge of every owned vertex, global order, global weights
        back = _global(v, v.edge_index)
        assert torch.equal(back, edge_index[:, mine])
        assert torch.equal(v.edge_weight, edge_weight[mine])
        assert bool((v.edge_index[1] < len(v.owned)).all())  # every target is owned
        total_edges += v.edge_index.shape[1]
        # recv lists cover the halo exactly, each from the halo vertex's owner
        received = torch.cat([_global(v, ids) for ids in v.recv.values()]) if v.recv else torch.empty(0, dtype=torch.long)
        assert sorted(received.tolist()) == expected_halo
        for p, ids in v.recv.items():
            assert p != r and bool((owner[_global(v, ids)] == p).all())
        for p, ids in v.send.items():
            assert p != r and bool((ids < len(v.owned)).all())  # only owned rows are sent
        # raw features (layer 0's inputs): every row r reads, owned or halo, is sensed here or arrives once
        # from the node that senses it
        reads = _global(v, torch.arange(len(v.owned) + len(v.halo)))
        assert torch.equal(v.global_ids, reads)
        assert bool((home[_global(v, v.sensed)] == r).all())
        arriving = [v.sensed] + list(v.raw_recv.values())
        assert sorted(torch.cat(arriving).tolist()) == list(range(len(reads)))  # each row exactly once
        for p, ids in v.raw_recv.items():
            assert p != r and bool((home[_global(v, ids)] == p).all())
            assert torch.equal(_global(v, ids), torch.sort(_global(v, ids)).values)
        for p, ids in v.raw_send.items():
            assert p != r and bool((home[ids] == r).all())
        # an owned vertex sensed elsewhere always arrives raw from its home
        for p in range(k):
            if p != r:
                moved = torch.nonzero((home == p) & (owner == r)).flatten()
                got = set(_global(v, v.raw_recv[p]).tolist()) if p in v.raw_recv else set()
                assert set(moved.tolist()) <= got
    assert total_edges == edge_index.shape[1]

    # what r sends p is, id for id and in order, what p expects from r
    for v in views:
        for p in range(k):
            if p == v.rank:
                continue
            sent = _global(v, v.send[p]) if p in v.send else torch.empty(0, dtype=torch.long)
            peer = views[p]
            recv = _global(peer, peer.recv[v.rank]) if v.rank in peer.recv else torch.empty(0, dtype=torch.long)
            assert torch.equal(sent, recv), f"{v.rank}->{p}"
            raw_out = v.raw_send.get(p, torch.empty(0, dtype=torch.long))
            raw_in = _global(peer, peer.raw_recv[v.rank]) if v.rank in peer.raw_recv else torch.empty(0, dtype=torch.long)
            assert torch.equal(raw_out, raw_in)
    if plan_name == "cloud":
        assert all(not v.send and not v.recv for v in views)  # one owner: no halos at all
        assert sum(len(ids) for v in views for ids in v.raw_send.values()) == n - int((home == k - 1).sum())


# ----------------------------------------------------------------------------- 3. compression


def _rows(r: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-3, 3, r)[:, None]  # rows of very different ranges: each gets its own step
    rows = torch.randn(r, width, generator=g) * scale + torch.randn(r, 1, generator=g) * scale
    rows[0] = 1.5  # a constant row (step 0)
    return rows


def _step(rows: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    levels = (2.0 ** bits.double()) - 1
    return (rows.double().max(1).values - rows.double().min(1).values) / levels


@pytest.mark.parametrize("mode", ["int8", "int4", "degree"])
@pytest.mark.parametrize("width", [1, 7, 16, 33])
def test_quantized_round_trip_is_within_half_a_step_per_row(mode, width):
    rows = _rows(40, width)
    degrees = torch.arange(40) % 9  # 0..8
    codec = Codec(mode, high_degree=5)
    payload = codec.encode(rows, degrees)
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    assert len(payload) == codec.payload_bytes(degrees, width)
    back = codec.decode(payload, degrees, width)
    assert back.shape == rows.shape and back.dtype == torch.float32
    bits = codec.bits(degrees)
    err = (back.double() - rows.double()).abs().max(1).values
    bound = _step(rows, bits) / 2
    slack = 1e-6 * rows.double().abs().max(1).values + 1e-30  # float32 rounding of min, step and the sum
    assert bool((err <= bound + slack).all()), (err - bound).max()
    assert float(err[0]) == 0.0  # a constant row comes back exactly
    if width > 1:  # one feature: every row is constant and exact; otherwise the coarse rows lose something
        assert float(err.max()) > 0
    else:
        assert torch.equal(back, rows)


@pytest.mark.parametrize("width", [1, 5, 16])
def test_none_is_lossless_and_four_bytes_a_feature(width):
    rows = _rows(12, width, seed=3)
    rows[1, 0] = float("inf")
    rows[2, -1] = -0.0
    degrees = torch.arange(12)
    codec = Codec("none")
    payload = codec.encode(rows, degrees)
    assert len(payload) == codec.payload_bytes(degrees, width) == 12 * width * 4
    back = codec.decode(payload.clone(), degrees, width)
    assert torch.equal(back, rows)
    assert compression_ratio(codec, degrees, width) == 1.0


@pytest.mark.parametrize("width", [1, 7, 16])
def test_payload_sizes(width):
    degrees = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert Codec("int8").payload_bytes(degrees, width) == 10 * (HEADER_BYTES + width)
    assert Codec("int4").payload_bytes(degrees, width) == 10 * (HEADER_BYTES + (width + 1) // 2)
    degree = Codec("degree", high_degree=6)  # 6, 7, 8, 9 at 4 bits; 0..5 at 8
    assert degree.bits(degrees).tolist() == [8] * 6 + [4] * 4
    assert degree.payload_bytes(degrees, width) == 6 * (HEADER_BYTES + width) + 4 * (HEADER_BYTES + (width + 1) // 2)
    for mode in ("none", "int8", "int4", "degree"):
        assert len(Codec(mode, 6).encode(torch.empty(0, width), torch.empty(0, dtype=torch.long))) == 0
        assert Codec(mode, 6).payload_bytes(torch.empty(0, dtype=torch.long), width) == 0


def test_degree_mode_sends_high_degree_rows_at_four_bits_and_the_rest_at_eight():
    width = 9
    rows = _rows(30, width, seed=7)
    degrees = torch.tensor([3, 10] * 15)
    codec = Codec("degree", high_degree=4)
    back = codec.decode(codec.encode(rows, degrees), degrees, width)
    high, low = degrees >= 4, degrees < 4
    int4, int8 = Codec("int4"), Codec("int8")
    assert torch.equal(back[high], int4.decode(int4.encode(rows[high], degrees[high]), degrees[high], width))
    assert torch.equal(back[low], int8.decode(int8.encode(rows[low], degrees[low]), degrees[low], width))
    # Codec.for_graph puts the threshold at the median degree
    task = load_graph("sensor", 300, features=4, seed=2)
    graph_codec = Codec.for_graph("degree", task.degrees())
    assert graph_codec.high_degree == max(int(torch.median(task.degrees().float())), 1)
    bits = graph_codec.bits(task.degrees())
    assert bool((bits[task.degrees() >= graph_codec.high_degree] == 4).all())
    assert bool((bits[task.degrees() < graph_codec.high_degree] == 8).all())
    assert 0 < int((bits == 4).sum()) < task.num_nodes


def test_a_bad_codec_mode_is_refused():
    with pytest.raises(SpecError) as info:
        Codec("int2")
    assert info.value.field == "compression"


# ----------------------------------------------------------------------------- 4. planning


def _fog_inputs(task, setup):
    home = nearest_homes(task.pos, setup.positions)
    speeds = [setup.cores[n] for n in setup.fog] + [0.0]
    return home, setup.nodes, speeds


def test_nearest_homes_is_the_closest_node():
    rng = np.random.default_rng(0)
    pos, nodes = rng.uniform(0, 1, (50, 2)), rng.uniform(0, 1, (4, 2))
    home = nearest_homes(pos, nodes)
    for p, h in zip(pos, home):
        assert h == int(np.argmin([np.hypot(*(p - q)) for q in nodes]))


@pytest.mark.parametrize("graph,n", [("sensor", 400), ("road", 400), ("sbm", 500)])
@pytest.mark.parametrize("speeds", [[0.6138, 0.2178, 0.0709, 0.0975, 0.0], [1.0, 2.0, 3.0, 0.0], [1, 1, 1, 1, 1]])
def test_fograph_partition_loads_follow_speed_shares(graph, n, speeds):
    task = load_graph(graph, n, features=4, seed=0)
    k = len(speeds)
    nodes = [f"n{i}" for i in range(k)]
    home = nearest_homes(task.pos, np.random.default_rng(0).uniform(0, 1, (k, 2)))
    plan = fograph_partition(task.edge_index, home, nodes, speeds, tolerance=0.03)
    n = task.num_nodes
    target = np.asarray(speeds, float) / sum(speeds) * n
    loads = np.asarray(plan.loads())
    assert loads.sum() == n and len(plan.owner) == n
    assert np.all(loads[target == 0] == 0)  # a zero-speed node (the cloud) owns nothing
    assert np.all(loads <= np.ceil(target * 1.03) + 1), (loads, target)
    assert plan.imbalance() <= 1.05
    assert plan.speeds == [float(s) for s in speeds] and np.array_equal(plan.home, home)
    assert plan.locality() > 1.0 / k  # better than blind: blocks go where their data is sensed


def test_plan_fograph_picks_its_fastest_mix(task, setup):
    home, nodes, speeds = _fog_inputs(task, setup)
    best = plan_fograph(task.edge_index, home, nodes, speeds, COSTS)
    assert best.mix is not None and best.estimate_s == pytest.approx(COSTS.estimate(best))
    speed_share = np.asarray(speeds) / sum(speeds)
    sensed = np.bincount(home, minlength=len(nodes)) / len(home)
    estimates = {}
    for m in np.linspace(0.0, 1.0, 11):
        share = m * speed_share + (1 - m) * np.where(speed_share > 0, sensed, 0.0)
        plan = fograph_partition(task.edge_index, home, nodes, speeds, share=share / share.sum())
        estimates[round(float(m), 1)] = COSTS.estimate(plan)
    assert best.estimate_s <= estimates[0.0] and best.estimate_s <= estimates[1.0]
    assert best.estimate_s == pytest.approx(min(estimates.values()))
    assert estimates[round(best.mix, 1)] == pytest.approx(best.estimate_s)
    # on this cluster neither extreme wins: the slow nodes sense a quarter each but compute a tenth as fast
    assert 0.0 < best.mix < 1.0
    assert best.loads()[-1] == 0  # the cloud, speed 0, gets nothing


def test_fog_costs_estimate_by_hand():
    plan = FogPlan("x", ["a", "b"], owner=np.array([0, 0, 0, 1]), home=np.array([0, 1, 1, 1]), speeds=[2.0, 1.0])
    costs = FogCosts(seconds_per_vertex=1.0, bytes_per_vertex=10.0, lan_bytes_per_s=5.0)
    # a: 3 vertices at speed 2 = 1.5 s, 2 raw rows in = 4 s; b: 1 vertex = 1 s, 2 raw rows out = 4 s
    assert costs.estimate(plan) == pytest.approx(5.5)


def test_even_partition_is_equal_on_the_nodes_it_uses(task, setup):
    home, nodes, _ = _fog_inputs(task, setup)
    plan = even_partition(task.edge_index, home, nodes, use=setup.fog)
    loads = np.asarray(plan.loads())
    assert loads[-1] == 0 and loads.sum() == task.num_nodes
    fair = task.num_nodes / len(setup.fog)
    assert loads[:-1].min() >= fair * 0.95 and loads[:-1].max() <= fair * 1.05
    assert plan.speeds == [1.0] * len(setup.fog) + [0.0] and plan.method == "even-fog"
    every = even_partition(task.edge_index, home, nodes)  # default: every node
    assert min(every.loads()) > 0
    with pytest.raises(SpecError) as info:
        even_partition(task.edge_index, home, nodes, use=["tx2", "mars"])
    assert info.value.field == "use"


def test_metis_parts_label_every_part(task):
    parts = metis_parts(task.edge_index, task.num_nodes, 8)
    assert set(parts.tolist()) == set(range(8))
    assert np.array_equal(metis_parts(task.edge_index, task.num_nodes, 1), np.zeros(task.num_nodes))


def test_cloud_plan_puts_everything_on_the_cloud(task, setup):
    home, nodes, _ = _fog_inputs(task, setup)
    plan = cloud_plan(home, nodes, "cloud")
    assert np.all(plan.owner == nodes.index("cloud")) and plan.loads()[-1] == task.num_nodes
    assert plan.locality() == 0.0 and plan.cut_edges(task.edge_index) == 0
    assert plan.speeds == [0.0] * len(setup.fog) + [1.0]
    with pytest.raises(SpecError) as info:
        cloud_plan(home, nodes, "aws")
    assert info.value.field == "cloud"


@pytest.mark.parametrize("speeds", [[1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 0.0, 0.0], []])
def test_bad_speeds_are_refused(task, speeds):
    nodes = ["a", "b", "c"] if speeds else []
    home = np.zeros(task.num_nodes, dtype=np.int64)
    for plan in (lambda: fograph_partition(task.edge_index, home, nodes, speeds),
                 lambda: plan_fograph(task.edge_index, home, nodes, speeds, COSTS)):
        with pytest.raises(SpecError) as info:
            plan()
        assert info.value.field == "speeds"


def test_plans_round_trip_through_json(plans):
    import json

    for plan in plans.values():
        again = FogPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again.method == plan.method and again.nodes == plan.nodes and again.speeds == plan.speeds
        assert np.array_equal(again.owner, plan.owner) and np.array_equal(again.home, plan.home)


# ----------------------------------------------------------------------------- 5. data and models


@pytest.mark.parametrize("name", GRAPHS)
def test_graphs_are_sorted_symmetric_loop_free_and_in_the_unit_square(name):
    task = load_graph(name, 300, features=12, classes=3, seed=4)
    n = task.num_nodes
    ei = task.edge_index
    assert ei.dtype == torch.int64 and ei.shape[0] == 2 and ei.shape[1] == 2 * task.num_edges > 0
    src, dst = ei[0].numpy(), ei[1].numpy()
    assert np.all((src >= 0) & (src < n) & (dst >= 0) & (dst < n))
    order = np.lexsort((src, dst))  # by target, then source
    assert np.array_equal(order, np.arange(len(src)))
    assert not np.any(src == dst)
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert len(pairs) == len(src)  # no duplicates
    assert pairs == {(b, a) for a, b in pairs}  # both directions
    assert torch.equal(task.degrees(), torch.bincount(ei[0], minlength=n))
    assert task.x.dtype == torch.float32 and task.x.shape[0] == n and task.y.shape == (n,)
    assert task.train_mask.dtype == torch.bool and task.train_mask.shape == (n,)
    assert 0 < int(task.train_mask.sum()) < n
    assert task.pos.shape == (n, 2) and task.pos.min() >= 0.0 and task.pos.max() <= 1.0
    assert int(task.y.min()) >= 0 and int(task.y.max()) < task.num_classes
    assert task.real == (name == "karate") and task.describe()["real"] == task.real
    if name == "karate":
        assert (n, task.num_edges, task.num_classes) == (34, 78, 2) and "networkx" in task.source
        assert torch.allclose(task.x.sum(1), torch.ones(n))  # normalised adjacency rows
    else:
        assert task.x.shape[1] == 12 and task.num_classes == 3 and "generated" in task.source
        assert n == (round(300 ** 0.5) ** 2 if name == "road" else 300)
    again = load_graph(name, 300, features=12, classes=3, seed=4)
    assert torch.equal(again.edge_index, ei) and torch.equal(again.x, task.x)  # seeded


@pytest.mark.parametrize("kwargs,field", [({"name": "cora"}, "graph"), ({"name": "sensor", "num_nodes": 10}, "vertices"),
                                          ({"name": "sbm", "num_nodes": 2_000_000}, "vertices")])
def test_bad_graph_requests_name_the_field(kwargs, field):
    with pytest.raises(SpecError) as info:
        load_graph(**kwargs)
    assert info.value.field == field and field in str(info.value)


def test_models_refuse_bad_kinds_and_gcn_weights_are_normalised(task):
    with pytest.raises(SpecError) as info:
        GNN("gin", 4, 8, 2)
    assert info.value.field == "model"
    with pytest.raises(SpecError) as info:
        GNN("gcn", 4, 8, 2, layers=0)
    assert info.value.field == "layers"
    index, weight = edge_weights("gcn", task.edge_index, task.num_nodes)
    assert index.shape[1] == task.edge_index.shape[1] + task.num_nodes  # self-loops added
    assert bool((index[1][1:] >= index[1][:-1]).all())  # in target order
    deg = (task.degrees() + 1).float()
    assert torch.allclose(weight, 1 / torch.sqrt(deg[index[0]] * deg[index[1]]))
    same, none = edge_weights("sage", task.edge_index, task.num_nodes)
    assert same is task.edge_index and none is None


# ----------------------------------------------------------------------------- fog setup (no processes)


def test_fog_setup_splits_the_fog_cores_by_speed(setup):
    assert setup.fog == ["tx2", "nano", "pi5", "rock5b"] and setup.cloud == "cloud"
    assert setup.nodes == setup.fog + ["cloud"]
    assert sum(setup.cores[n] for n in setup.fog) == pytest.approx(1.0)
    assert setup.cores["cloud"] == 1.0
    assert setup.cores["tx2"] > setup.cores["pi5"]
    assert setup.positions.shape == (4, 2)
    for n in setup.nodes:
        assert setup.cluster.devices[n].peak("fp32") == pytest.approx(setup.cores[n] * 1e9)
    cluster = load_cluster(str(CLUSTER))
    with pytest.raises(SpecError) as info:
        fog_setup(cluster, cloud="aws")
    assert info.value.field == "cloud"
    lost = dataclasses.replace(cluster, locations={k: v for k, v in cluster.locations.items() if k != "pi5"})
    with pytest.raises(SpecError) as info:
        fog_setup(lost)
    assert info.value.field == "location"


def test_measure_costs_reads_the_codec_and_the_lan(task, trained, setup):
    costs = measure_costs(task, trained["gcn"], setup, repeats=1)
    assert costs.seconds_per_vertex > 0
    assert costs.bytes_per_vertex == FEATURES * 4
    assert costs.lan_bytes_per_s == pytest.approx(100e6 / 8)
    int8 = measure_costs(task, trained["gcn"], setup, Codec("int8"), repeats=1)
    assert int8.bytes_per_vertex == HEADER_BYTES + FEATURES


def test_run_fog_refuses_bad_runs_and_launchers(task, trained, setup, plans, tmp_path):
    model = trained["gcn"]
    with pytest.raises(SpecError) as info:
        run_fog(task, model, setup, [("a", plans["cloud"], Codec()), ("a", plans["cloud"], Codec())], launcher="local")
    assert info.value.field == "runs"
    with pytest.raises(SpecError) as info:
        run_fog(task, model, setup, [("a", plans["cloud"], Codec())], launcher="ssh", work_dir=tmp_path)
    assert info.value.field == "launcher"


# ----------------------------------------------------------------------------- 6. real processes


def _expected_bytes(task, trained, plan, codec) -> list[int]:
    """Bytes each rank sends in one frame: raw rows to every node that reads them, then before each later
    layer its owned rows in others' halos."""
    views = build_views(trained.edge_index, trained.edge_weight, plan)
    degrees = task.degrees()
    widths = trained.model.dims[:-1]
    out = []
    for v in views:
        total = sum(codec.payload_bytes(degrees[ids], widths[0]) for ids in v.raw_send.values())
        for w in widths[1:]:
            total += sum(codec.payload_bytes(degrees[v.owned[ids]], w) for ids in v.send.values())
        out.append(total)
    return out


def _check_runs(measured, task, trained, setup, runs, latency_frames):
    reference = trained.predict(task.x)
    for name, plan, codec in runs:
        run = measured.runs[name]
        assert run.matches_in_process, name
        assert run.codec == codec.mode
        assert len(run.latencies_s) == latency_frames and all(t > 0 for t in run.latencies_s)
        assert run.throughput_fps > 0
        assert run.bytes_per_frame == {n: float(b) for n, b in
                                       zip(setup.nodes, _expected_bytes(task, trained, plan, codec))}, name
        if codec.mode == "none":
            assert run.max_abs_error == 0.0 and run.agreement == 1.0, name
        else:
            compressed = partitioned_forward(trained.model, task.x, trained.edge_index, trained.edge_weight, plan,
                                             codec, task.degrees())
            assert run.max_abs_error == pytest.approx(float((compressed - reference).abs().max()))
            assert run.agreement > 0.9
        if plan.method == "cloud":
            sensed = np.bincount(plan.home, minlength=len(setup.nodes))
            for i, node in enumerate(setup.fog):
                assert run.bytes_per_frame[node] == sensed[i] * FEATURES * 4
            assert run.bytes_per_frame[setup.cloud] == 0


@pytest.fixture(scope="module")
def fog_job(task, trained, setup, plans):
    model = trained["gcn"]
    degree = Codec.for_graph("degree", task.degrees())
    runs = [("fograph", plans["fograph"], Codec()), ("fograph-degree", plans["fograph"], degree),
            ("even-fog", plans["even-fog"], Codec()), ("cloud", plans["cloud"], Codec())]
    return model, runs


@pytest.mark.slow
def test_fog_nodes_as_local_processes_reproduce_the_in_process_run(task, trained, setup, fog_job):
    model, runs = fog_job
    costs = measure_costs(task, model, setup, repeats=1)  # a measured plan runs too
    measured_plan = fog_plans(task, setup, costs)["fograph"]
    runs = runs + [("fograph-measured", measured_plan, Codec())]
    out = run_fog(task, model, setup, runs, latency_frames=2, throughput_frames=2, warmup=1, launcher="local",
                  timeout_s=180)
    assert set(out.runs) == {name for name, _, _ in runs}
    assert out.where["launcher"] == "local"
    _check_runs(out, task, model, setup, runs, latency_frames=2)
    assert out.to_dict()["runs"]["cloud"]["matches_in_process"] is True


@pytest.mark.slow
@pytest.mark.root
def test_fog_nodes_on_the_testbed_reproduce_the_in_process_run(task, trained, setup, fog_job):
    from edgepool.testbed import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"testbed unavailable: {reason}")
    model, runs = fog_job
    runs = [runs[0], runs[1], runs[3]]  # fograph, compressed, cloud
    out = run_fog(task, model, setup, runs, latency_frames=2, throughput_frames=1, warmup=1, launcher="testbed",
                  timeout_s=300)
    assert out.where["launcher"] == "testbed"  # not a silent local fallback
    _check_runs(out, task, model, setup, runs, latency_frames=2)
    # the report's leftovers are what the testbed left behind after its teardown: nothing
    assert not any(out.where["leftovers"].values()), out.where["leftovers"]
