"""Plan, compare and draw layouts of a graph's vertices over devices, edge servers and the cloud.

`plan_layout` runs one method and returns a JSON-ready `Layout`; `compare_layouts` runs graph cuts against every
baseline on a benchmark-sized sensor graph, measures the approximation gap against the exact integer program on
small graphs, and times the incremental update against recomputing from scratch. Costs are modelled (the prices
and shapes in `layout_cost`), times are measured on this machine.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
from scipy.spatial import cKDTree

from edgepool.errors import SpecError
from edgepool.graph.data import SENSOR_DEGREE, sensor_network, sensor_radius
from edgepool.graph.graphcut import GraphChange, alpha_expansion, apply_change, greedy_choice, incremental_update
from edgepool.graph.layout_baselines import (EXACT_MAX_VERTICES, all_cloud, exact_layout, metis_layout,
                                             nearest_tier, random_layout)
from edgepool.graph.layout_cost import (CELLULAR_ACCESS_PER_GB, TIERS, GNNShape, LayoutProblem, TierNetwork, TierPrices,
                                        approximation_factor, build_problem, layout_cost, make_tier_network)

METHODS = ("graphcut", "all-cloud", "nearest-tier", "metis", "random", "greedy", "exact")
VERTICES_PER_DEVICE = 50  # default number of end devices: one per this many vertices
KIND = "modelled cost (US$ per inference, from the layout cost model; times measured)"


@dataclass
class Layout:
    """Where every vertex runs, what it costs (modelled), and how the answer was found."""
    method: str
    nodes: list  # graph node ids, in order
    locations: list  # location id per node (devices 0..D-1, edge servers D..D+E-1, cloud D+E)
    location_names: list  # "device-3", "edge-1", "cloud" per node
    tier_counts: dict  # {"device": k, "edge": k, "cloud": k}
    cost: dict  # CostBreakdown as a dict, US$ per inference
    seconds: float  # measured solve time
    sweeps: int | None = None
    extra: dict = field(default_factory=dict)
    kind: str = KIND

    def to_dict(self) -> dict:
        return asdict(self)


def _layout(problem: LayoutProblem, method: str, locations: np.ndarray, seconds: float, **extra) -> Layout:
    tiers = problem.loc_tier[locations]
    net = problem.network
    on_edge = tiers == 1
    extra.setdefault("off_home_edge", int((on_edge & (locations != problem.home_edge)).sum()))
    names = {loc: net.location_name(loc) for loc in np.unique(locations).tolist()}
    return Layout(method=method, nodes=problem.nodes.tolist(), locations=locations.tolist(),
                  location_names=[names[loc] for loc in locations.tolist()],
                  tier_counts={t: int((tiers == i).sum()) for i, t in enumerate(TIERS)},
                  cost=layout_cost(problem, locations).to_dict(), seconds=seconds,
                  sweeps=extra.pop("sweeps", None), extra=extra)


def solve(problem: LayoutProblem, method: str = "graphcut", seed: int = 0, time_limit_s: float = 60.0) -> Layout:
    """One method on an already built problem."""
    if method not in METHODS:
        raise SpecError("method", method, ", ".join(METHODS))
    start = time.perf_counter()
    if method == "graphcut":
        r = alpha_expansion(problem)
        return _layout(problem, method, problem.locations(r.choice), r.seconds, sweeps=r.sweeps, moves=r.moves,
                       converged=r.converged, approximation_factor=approximation_factor(problem))
    if method == "exact":
        r = exact_layout(problem, time_limit_s=time_limit_s)
        return _layout(problem, method, problem.locations(r.choice), r.seconds, optimal=r.optimal, status=r.status)
    if method == "greedy":
        loc = problem.locations(greedy_choice(problem))
    elif method == "all-cloud":
        loc = all_cloud(problem)
    elif method == "nearest-tier":
        loc = nearest_tier(problem)
    elif method == "metis":
        loc = metis_layout(problem, seed=seed)
    else:
        loc = random_layout(problem, seed=seed)
    return _layout(problem, method, loc, time.perf_counter() - start)


def plan_layout(graph: nx.Graph, network: TierNetwork, prices: TierPrices | None = None,
                shape: GNNShape | None = None, method: str = "graphcut", seed: int = 0,
                time_limit_s: float = 60.0) -> Layout:
    """Lay out `graph` (integer nodes with "pos") over `network` with one of `METHODS`."""
    if method not in METHODS:
        raise SpecError("method", method, ", ".join(METHODS))
    return solve(build_problem(graph, network, prices, shape), method, seed, time_limit_s)


def random_change(graph: nx.Graph, rng: np.random.Generator, vertices: int, edges: int, radius: float,
                  next_id: int) -> GraphChange:
    """Insert and delete about `vertices` vertices and `edges` edges (half each), geometric like the graph: new
    vertices join every vertex within `radius`, new edges join a vertex to a non-neighbour within 2 x `radius`."""
    nodes = np.array(list(graph.nodes))
    pos = np.array([graph.nodes[v]["pos"] for v in nodes.tolist()])
    tree = cKDTree(pos)
    change = GraphChange()
    n_add, n_del = (vertices + 1) // 2, vertices // 2
    e_add, e_del = (edges + 1) // 2, edges // 2
    removed = set(rng.choice(nodes, size=min(n_del, len(nodes) - 1), replace=False).tolist())
    for k in range(n_add):
        xy = rng.random(2)
        v = next_id + k
        change.add_vertices[v] = (float(xy[0]), float(xy[1]))
        change.add_edges += [(v, int(nodes[j])) for j in tree.query_ball_point(xy, radius)
                             if int(nodes[j]) not in removed]
    for _ in range(e_add):
        u = int(rng.integers(len(nodes)))
        near = [j for j in tree.query_ball_point(pos[u], 2 * radius) if j != u]
        if near:
            a, b = int(nodes[u]), int(nodes[near[int(rng.integers(len(near)))]])
            if not graph.has_edge(a, b) and a not in removed and b not in removed:
                change.add_edges.append((a, b))
    edge_list = list(graph.edges)
    picks = rng.choice(len(edge_list), size=min(e_del, len(edge_list)), replace=False)
    change.remove_edges = [edge_list[i] for i in picks.tolist()
                           if edge_list[i][0] not in removed and edge_list[i][1] not in removed]
    change.add_edges = list(dict.fromkeys(tuple(sorted(e)) for e in change.add_edges))
    change.remove_vertices = sorted(removed)
    return change


def _reduction(base: float, ours: float) -> float:
    return float(1.0 - ours / base) if base > 0 else 0.0


def compare_layouts(n: int = 10_000, n_devices: int | None = None, n_edge: int = 9, seed: int = 0,
                    avg_degree: float = SENSOR_DEGREE, small_graphs: int = 10, small_n: int = 28, updates: int = 20,
                    churn: float = 0.01, hops: int = 1, prices: TierPrices | None = None,
                    shape: GNNShape | None = None, time_limit_s: float = 60.0,
                    plot_path: str | Path | None = None) -> dict:
    """Graph cuts vs every baseline on a seeded `n`-vertex sensor graph; the gap to the exact optimum on
    `small_graphs` graphs of `small_n` vertices; incremental update vs recompute over `updates` changes that
    together insert/delete `churn` x n vertices and `churn` x m edges (half insertions, half deletions). With
    `plot_path`, `draw_layout`'s picture of the graph-cut layout and every method's cost there ("plot")."""
    if small_n > EXACT_MAX_VERTICES:
        raise SpecError("small_n", small_n, f"at most {EXACT_MAX_VERTICES} (the exact program's size cap)")
    if not 0 < churn <= 0.5:
        raise SpecError("churn", churn, "a fraction in (0, 0.5]")
    if int(updates) < 1:
        raise SpecError("updates", updates, "an integer >= 1")
    prices, shape = prices or TierPrices(), shape or GNNShape()
    wall = time.perf_counter()
    n_devices = n_devices or max(1, n // VERTICES_PER_DEVICE)
    graph = sensor_network(n, seed, avg_degree)
    network = make_tier_network(n_devices, n_edge, seed)
    t = time.perf_counter()
    problem = build_problem(graph, network, prices, shape)
    build_s = time.perf_counter() - t
    layouts = {m: solve(problem, m, seed) for m in METHODS if m != "exact"}
    ours = layouts["graphcut"].cost["total"]
    metrics = {f"layout_cost_reduction_vs_{m.replace('-', '_')}": _reduction(layouts[m].cost["total"], ours)
               for m in ("all-cloud", "nearest-tier", "metis", "random", "greedy")}

    # approximation gap on small graphs
    gaps, small = [], []
    for s in range(small_graphs):
        g = sensor_network(small_n, seed + 1000 + s, mean_degree=7.0)
        net = make_tier_network(max(2, small_n // 5), 3, seed + 1000 + s)
        p = build_problem(g, net, prices, shape)
        gc, ex = alpha_expansion(p), exact_layout(p, time_limit_s=time_limit_s)
        gap = (gc.energy - ex.energy) / ex.energy if ex.energy > 0 else 0.0
        gaps.append(gap)
        small.append({"seed": seed + 1000 + s, "n": p.n, "m": len(p.edges), "graphcut": gc.energy,
                      "exact": ex.energy, "exact_optimal": ex.optimal, "gap": gap, "graphcut_s": gc.seconds,
                      "exact_s": ex.seconds, "bound_2c": approximation_factor(p)})

    # incremental update vs recompute
    rng = np.random.default_rng(seed + 7)
    g = graph.copy()
    cur_p, cur_choice = problem, alpha_expansion(problem).choice
    next_id = int(max(g.nodes)) + 1
    per_v = max(1, int(round(churn * n / updates)))
    per_e = max(1, int(round(churn * graph.number_of_edges() / updates)))
    steps, inc_s, rec_s, builds = [], 0.0, 0.0, 0.0
    for _ in range(int(updates)):
        change = random_change(g, rng, per_v, per_e, sensor_radius(n, avg_degree), next_id)
        next_id += len(change.add_vertices)
        touched = apply_change(g, change)
        t = time.perf_counter()
        new_p = build_problem(g, network, prices, shape)
        builds += time.perf_counter() - t
        inc = incremental_update(cur_p, cur_choice, new_p, touched, hops=hops)
        rec = alpha_expansion(new_p, evaluate=False)  # costs evaluated outside both timers
        rec.energy = new_p.energy(rec.choice)
        inc_s, rec_s = inc_s + inc.seconds, rec_s + rec.seconds
        steps.append({"n": new_p.n, "m": len(new_p.edges), "touched": len(touched), "affected": len(inc.affected),
                      "changed": len(inc.changed), "incremental_s": inc.seconds, "recompute_s": rec.seconds,
                      "incremental_cost": inc.energy, "recompute_cost": rec.energy,
                      "gap": (inc.energy - rec.energy) / rec.energy})
        cur_p, cur_choice = new_p, inc.choice
    inc_gaps = [s["gap"] for s in steps]

    # the same graph with the devices on retail mobile data (the other scenario)
    cellular = TierPrices(**{**asdict(prices), "access_per_gb": CELLULAR_ACCESS_PER_GB})
    lp = build_problem(graph, network, cellular, shape)
    what_if = {m: solve(lp, m, seed).cost["total"] for m in ("graphcut", "all-cloud", "nearest-tier", "metis",
                                                              "random")}
    metrics.update({
        "layout_gap_vs_exact": float(np.mean(gaps)),  # mean over the small graphs
        "layout_gap_vs_exact_max": float(np.max(gaps)),
        "incremental_speedup_vs_recompute": rec_s / inc_s if inc_s > 0 else float("inf"),
        "incremental_cost_gap": float(np.max(inc_gaps)),  # worst update; positive = incremental costs more
        "incremental_cost_gap_mean": float(np.mean(inc_gaps)),
        # the same, with rebuilding the problem arrays from the changed networkx graph counted on both sides
        "incremental_speedup_incl_problem_build": (rec_s + builds) / (inc_s + builds),
        "layout_cost_reduction_vs_all_cloud_cellular": _reduction(what_if["all-cloud"], what_if["graphcut"]),
    })
    result = {
        "kind": KIND,
        "metrics": metrics,
        "metric_notes": {
            "layout_cost_reduction_vs_*": "1 - graphcut total / baseline total, modelled $ per inference",
            "layout_gap_vs_exact": f"mean relative excess of graphcut over the HiGHS optimum on {small_graphs} "
                                   f"seeded {small_n}-vertex graphs (max in layout_gap_vs_exact_max)",
            "incremental_speedup_vs_recompute": "total measured solve time of recomputing from scratch / total "
                                                "measured time of the incremental update, over all updates "
                                                "(rebuilding the problem arrays is excluded from both, reported "
                                                "as problem_build_s)",
            "incremental_cost_gap": "max over updates of (incremental - recompute) / recompute; the incremental "
                                    "layout is carried from update to update, never reset to the recompute",
        },
        "graph": {"n": problem.n, "m": len(problem.edges), "avg_degree": avg_degree, "seed": seed,
                  "devices": network.n_devices, "edge_servers": network.n_edge},
        "prices": asdict(prices),
        "shape": {**asdict(shape), "flops_per_vertex_mean": float(problem.flops.mean()),
                  "edge_bytes": shape.edge_bytes, "raw_bytes": shape.raw_bytes, "state_bytes": shape.state_bytes},
        "approximation_factor_2c": approximation_factor(problem),
        "layouts": {m: {k: v for k, v in lay.to_dict().items() if k not in ("nodes", "locations", "location_names")}
                    for m, lay in layouts.items()},
        "small_graphs": small,
        "incremental": {"updates": int(updates), "hops": hops, "vertices_per_update": per_v,
                        "edges_per_update": per_e, "incremental_s": inc_s, "recompute_s": rec_s,
                        "problem_build_s": builds, "steps": steps},
        "cellular_access": {"access_per_gb": CELLULAR_ACCESS_PER_GB, "totals": what_if,
                            "reduction_vs_all_cloud": _reduction(what_if["all-cloud"], what_if["graphcut"]),
                            "reduction_vs_nearest_tier": _reduction(what_if["nearest-tier"], what_if["graphcut"])},
        "problem_build_s": build_s,
        "wall_s": time.perf_counter() - wall,
    }
    if plot_path is not None:
        result["plot"] = str(draw_layout(graph, network, layouts["graphcut"], plot_path, result))
    return result


def draw_layout(graph: nx.Graph, network: TierNetwork, layout: Layout, path: str | Path,
                comparison: dict | None = None) -> Path:
    """Vertices coloured by tier (those on an edge server other than their own apart) with devices and edge servers
    marked; with `comparison` (a `compare_layouts` result) a bar chart of each method's modelled cost breakdown
    beside it."""
    from edgepool.plotting import save_figure, plt

    colours = {"device": "#55A868", "edge": "#4C72B0", "edge (not home)": "#8FB8E8", "cloud": "#C44E52"}
    pos = {v: graph.nodes[v]["pos"] for v in graph.nodes}
    missing = [v for v in layout.nodes if v not in pos]
    if missing:
        raise SpecError("layout.nodes", missing[:3], "nodes of the graph being drawn")
    panels = 2 if comparison else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.6), squeeze=False, layout="constrained")
    ax = axes[0][0]
    xy = np.array([pos[v] for v in layout.nodes])
    names = np.array(layout.location_names)
    tier = np.array([s.split("-")[0] for s in names], dtype=object)
    # an edge server other than the home device's own (every edge server is a candidate; raw data then crosses
    # the backhaul): drawn in a lighter blue
    home_edge = network.device_edge[cKDTree(network.device_pos).query(xy)[1]]
    server = np.array([int(s.split("-")[1]) if s.startswith("edge-") else -1 for s in names])
    tier[(tier == "edge") & (server != home_edge)] = "edge (not home)"
    if graph.number_of_edges() <= 3000:
        for u, v in graph.edges:
            ax.plot([pos[u][0], pos[v][0]], [pos[u][1], pos[v][1]], color="#DDDDDD", lw=0.4, zorder=0)
    size = 3 if len(xy) > 2000 else 14
    for t, c in colours.items():
        sel = tier == t
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=c, label=f"{t} ({int(sel.sum())})", zorder=1)
    ax.scatter(network.device_pos[:, 0], network.device_pos[:, 1], marker="^", s=18, facecolors="none",
               edgecolors="black", lw=0.6, label="end device", zorder=2)
    ax.scatter(network.edge_pos[:, 0], network.edge_pos[:, 1], marker="s", s=70, color="black",
               label="edge server", zorder=3)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_title(f"{layout.method}: ${layout.cost['total']:.3g} per inference (modelled)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, frameon=False)
    if comparison:
        bx = axes[0][1]
        # random costs 100x the rest and would flatten every other bar: its total goes in the title instead
        methods = [m for m in comparison["layouts"] if m != "random"]
        parts = ("compute", "storage", "communication")
        bottom = np.zeros(len(methods))
        for part, c in zip(parts, ("#8172B3", "#CCB974", "#8C8C8C")):
            vals = np.array([comparison["layouts"][m]["cost"][part] for m in methods])
            bx.bar(methods, vals, bottom=bottom, color=c, label=part)
            bottom += vals
        bx.set_ylabel("US$ per inference (modelled)")
        left_out = comparison["layouts"].get("random")
        bx.set_title("cost breakdown per method (modelled)" + (
            f"; random: ${left_out['cost']['total']:.3g}, not drawn" if left_out else ""), fontsize=9)
        bx.tick_params(axis="x", labelrotation=30, labelsize=8)
        bx.legend(fontsize=7)
    return save_figure(fig, path)
