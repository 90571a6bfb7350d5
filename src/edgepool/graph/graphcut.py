"""Alpha-expansion over locations by max-flow / min-cut (PyMaxflow), and its incremental update.

Labels are locations; vertex v may take its home device, any edge server or the cloud (`LayoutProblem.cand`; any
other device is an infinite unary cost), so the expansion move toward a device concerns only that device's vertices
and the moves toward an edge server or the cloud concern every vertex. The pairwise term is bytes x a metric path
price, so every expansion move is submodular (E00 + E11 <= E01 + E10 is the triangle inequality, E11 = 0) and one
min cut solves it exactly (Kolmogorov & Zabih 2004). Sweeping over all labels until a sweep makes no decrease
converges (the cost never increases and takes finitely many values), each iterate is feasible (every vertex keeps
one of its candidates), and the local optimum is within 2c of the optimum, c = max/min nonzero path price (Boykov,
Veksler & Zabih 2001): the parameterized constant factor.

By default (`moves="batched"`) a sweep is one min cut per edge server, one for the cloud, and one per colour of
the device conflict graph (`LayoutProblem.device_batches`): the expansions toward devices whose vertices share no
graph edge are independent binary problems, so one min cut over their union is exactly those expansions one after
another. `moves="location"` is textbook alpha-expansion, one min cut per location. Both reach expansion local
optima (same 2c bound). A "tier move" sending every vertex to its own edge server at once is no longer offered: with
every edge server a candidate it is not submodular (a vertex on its neighbour's edge server while the neighbour is
on its own). The incremental update runs the same sweeps with only the vertices near a change free to move.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import maxflow
import networkx as nx
import numpy as np

from edgepool.errors import SpecError
from edgepool.graph.layout_cost import LayoutProblem

MOVES = ("batched", "location")


@dataclass
class MoveResult:
    choice: np.ndarray  # (n,) the layout (candidate column per vertex) after the move (a copy only when it changed)
    delta: float  # $ per inference, <= 0
    moved: np.ndarray  # vertex indices that switched to the target
    considered: int  # vertices in the binary problem
    cut_energy: float  # energy of the best binary move over the affected terms (min cut value + constants)
    current_energy: float  # energy of the same terms before the move


def _gather(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR positions of all entries of `rows`, and for each the index into `rows` it came from."""
    starts, counts = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(rows)), counts)
    offsets = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(offsets, counts) + np.repeat(starts, counts), owner


class NotSubmodular(ValueError):
    """A binary move whose pairwise table violates E00 + E11 <= E01 + E10 (min cut would not be exact)."""


def _binary_move(p: LayoutProblem, choice: np.ndarray, M: np.ndarray, col: int,
                 local: np.ndarray | None) -> MoveResult:
    """Best subset of vertices `M` to switch to their candidate column `col`, everyone else fixed: one min cut."""
    k = len(M)
    if k == 0:
        return MoveResult(choice, 0.0, M, 0, 0.0, 0.0)
    cur = p.cand[M, choice[M]]  # (k,) current locations
    tgt = p.cand[M, col]  # (k,) target locations
    E0 = p.unary[M, choice[M]].copy()  # cost if x = 0 (keep)
    E1 = p.unary[M, col].copy()  # cost if x = 1 (switch)
    idx, owner = _gather(p.indptr, M)
    nb = p.nbr[idx]
    w = p.edge_bytes[p.eid[idx]]
    local = np.full(p.n, -1, dtype=np.int64) if local is None else local
    local[M] = np.arange(k)
    nl = local[nb]
    local[M] = -1
    fixed = nl < 0
    nbf = nb[fixed]
    nb_loc = p.cand[nbf, choice[nbf]]
    of, wf = owner[fixed], w[fixed]
    E0 += np.bincount(of, wf * p.dist[cur[of], nb_loc], minlength=k)
    E1 += np.bincount(of, wf * p.dist[tgt[of], nb_loc], minlength=k)
    pair = ~fixed & (owner < nl)  # each movable-movable edge once
    i, j, wp = owner[pair], nl[pair], w[pair]
    A = wp * p.dist[cur[i], cur[j]]  # keep, keep
    B = wp * p.dist[cur[i], tgt[j]]  # keep, switch
    C = wp * p.dist[tgt[i], cur[j]]  # switch, keep
    Dd = wp * p.dist[tgt[i], tgt[j]]  # switch, switch (0 for an expansion: both targets are one location)
    # E(xi, xj) = A + (C - A) xi + (Dd - C) xj + (B + C - A - Dd) (1 - xi) xj; submodular iff B + C - A - Dd >= 0
    cap = B + C - A - Dd
    if len(cap) and cap.min() < -1e-9 * max(float(np.abs(A).max() + np.abs(Dd).max()), 1e-300):
        raise NotSubmodular(f"column {col} move has a non-submodular pair (B + C - A - D = {cap.min():.3g})")
    cap = np.maximum(cap, 0.0)
    T1 = E1 + np.bincount(i, C - A, minlength=k) + np.bincount(j, Dd - C, minlength=k)
    low = np.minimum(E0, T1)
    scale = 1.0 / max(float(np.abs(E0).mean() + np.abs(E1).mean()), 1e-300)  # O(1) capacities for the solver
    g = maxflow.Graph[float](k, len(i))
    ids = g.add_nodes(k)
    # a node on the sink side (segment 1) switches: its source edge, the cost of x = 1, is cut
    g.add_grid_tedges(ids, (T1 - low) * scale, (E0 - low) * scale)
    if len(i):
        g.add_edges(i.astype(np.int64), j.astype(np.int64), cap * scale, np.zeros(len(i)))
    flow = g.maxflow() / scale
    x = np.asarray(g.get_grid_segments(ids), dtype=bool)
    current = float(E0.sum() + A.sum())
    cut_energy = float(A.sum() + low.sum() + flow)
    # the exact change in cost of the chosen move, from the original terms (not the solver's rounding)
    xi, xj = x[i], x[j]
    pair_new = np.where(xi, np.where(xj, Dd, C), np.where(xj, B, A))
    delta = float(np.where(x, E1 - E0, 0.0).sum() + (pair_new - A).sum())
    if not x.any() or delta >= -1e-12 * max(abs(current), 1e-300):
        return MoveResult(choice, 0.0, M[:0], k, cut_energy, current)
    choice = choice.copy()
    choice[M[x]] = col
    return MoveResult(choice, delta, M[x], k, cut_energy, current)


def _restrict(cands: np.ndarray, active: np.ndarray | None, everyone: np.ndarray | None, n: int) -> np.ndarray:
    if active is None:
        return cands
    if everyone is not None and len(cands) == n:  # an edge server or the cloud: every active vertex
        return everyone
    return cands[active[cands]]


def expansion_move(problem: LayoutProblem, choice: np.ndarray, alpha: int, active: np.ndarray | None = None,
                   _local: np.ndarray | None = None, _active_idx: np.ndarray | None = None) -> MoveResult:
    """The best alpha-expansion move toward location `alpha` from `choice` (exact, one min cut); applied only if it
    lowers the cost. `active`: (n,) bool, the vertices allowed to move (default all); the rest are fixed and their
    edges to movable vertices become unary terms."""
    p = problem
    col = p.column_of(alpha)
    cands = _restrict(p.by_location[int(alpha)], active, _active_idx, p.n)
    M = cands[choice[cands] != col]
    return _binary_move(p, choice, M, col, _local)


def device_batch_move(problem: LayoutProblem, choice: np.ndarray, batch: np.ndarray,
                      active: np.ndarray | None = None, _local: np.ndarray | None = None) -> MoveResult:
    """The expansion moves toward the home devices of `batch` (one of `problem.device_batches`: vertices of devices
    no graph edge joins) all at once: each vertex of the batch may return to its own device. No pair of movable
    vertices on different devices is adjacent, so the binary problem is the disjoint union of the per-device
    expansions and one min cut solves every one of them exactly."""
    p = problem
    cands = batch if active is None else batch[active[batch]]
    M = cands[choice[cands] != 0]
    return _binary_move(p, choice, M, 0, _local)


@dataclass
class GraphCutResult:
    choice: np.ndarray  # (n,) candidate column per vertex (0 home device, 1..E edge servers, E + 1 cloud)
    energy: float  # $ per inference (modelled)
    sweeps: int
    moves: int  # accepted expansion moves
    converged: bool  # the last sweep made no move
    seconds: float
    history: list = field(default_factory=list)  # energy after each sweep (never increases)


def greedy_choice(problem: LayoutProblem) -> np.ndarray:
    """Each vertex at its cheapest candidate ignoring its edges: the start of alpha-expansion."""
    return np.argmin(problem.unary, axis=1).astype(np.int64)




def alpha_expansion(problem: LayoutProblem, init: np.ndarray | None = None, active: np.ndarray | None = None,
                    max_sweeps: int = 100, evaluate: bool = True, moves: str = "batched") -> GraphCutResult:
    """Sweep expansion moves over every label until a sweep lowers nothing (or `max_sweeps`).

    `init`: a candidate column per vertex (default `greedy_choice`). `active`: vertex indices (or an (n,) bool
    mask) allowed to move; the others keep `init`'s choice. Only the labels some active vertex can take are swept
    (its home device, every edge server, the cloud). `moves="batched"` (default) solves the device expansions one
    colour of `problem.device_batches` per min cut; `moves="location"` is textbook alpha-expansion, one move per
    location; both stop at an expansion local optimum. `evaluate=False` skips the two O(n + m) whole-graph cost
    evaluations (energy is then NaN, history relative): the incremental update stays local."""
    start = time.perf_counter()
    if moves not in MOVES:
        raise SpecError("moves", moves, " or ".join(repr(m) for m in MOVES))
    p = problem
    choice = greedy_choice(p) if init is None else np.asarray(init, dtype=np.int64).copy()
    if choice.shape != (p.n,) or choice.min(initial=0) < 0 or choice.max(initial=0) >= p.k:
        raise SpecError("init", f"shape {choice.shape}", f"({p.n},) candidate columns in 0..{p.k - 1}")
    D = p.network.n_devices
    shared = np.arange(D, p.network.n_locations)  # edge servers and the cloud
    active_idx = None
    if active is not None:
        active = np.asarray(active)
        if active.dtype != bool:
            mask = np.zeros(p.n, dtype=bool)
            mask[active] = True
            active = mask
        active_idx = np.flatnonzero(active)
        devices = np.unique(p.home[active_idx])
    else:
        devices = np.unique(p.home)
    energy = p.energy(choice) if evaluate else 0.0
    history, accepted, local = [energy], 0, np.full(p.n, -1, dtype=np.int64)
    converged, sweeps = False, 0
    while sweeps < max_sweeps:
        sweeps += 1
        changed = False
        for r in _sweep(p, devices, shared, active, active_idx, local, moves, lambda: choice):
            if len(r.moved):
                choice, energy, accepted, changed = r.choice, energy + r.delta, accepted + 1, True
        history.append(energy)
        if not changed:
            converged = True
            break
    final = p.energy(choice) if evaluate else float("nan")
    return GraphCutResult(choice, final, sweeps, accepted, converged, time.perf_counter() - start, history)


def _sweep(p: LayoutProblem, devices: np.ndarray, shared: np.ndarray, active, active_idx, local, moves: str,
           current):
    """One sweep's moves, each computed from the layout as it stands (`current()`) when its turn comes."""
    if moves == "location":
        for alpha in devices:
            yield expansion_move(p, current(), int(alpha), active, local, active_idx)
    else:
        for batch in p.device_batches:
            yield device_batch_move(p, current(), batch, active, local)
    for alpha in shared:
        yield expansion_move(p, current(), int(alpha), active, local, active_idx)


@dataclass
class GraphChange:
    """Insertions and deletions between two versions of the graph (node ids are integers)."""
    add_vertices: dict = field(default_factory=dict)  # node -> (x, y)
    remove_vertices: list = field(default_factory=list)
    add_edges: list = field(default_factory=list)  # (u, v); endpoints may be new vertices
    remove_edges: list = field(default_factory=list)


def apply_change(graph: nx.Graph, change: GraphChange) -> set:
    """Apply `change` to `graph` in place; return the touched vertices still in the graph (new vertices, endpoints
    of added or removed edges, former neighbours of removed vertices)."""
    touched = set()
    for v, xy in change.add_vertices.items():
        if v in graph:
            raise SpecError("change.add_vertices", v, "node ids not already in the graph")
        graph.add_node(v, pos=(float(xy[0]), float(xy[1])))
        touched.add(v)
    for u, v in change.add_edges:
        if u not in graph or v not in graph:
            raise SpecError("change.add_edges", (u, v), "edges between vertices of the graph (or added ones)")
        graph.add_edge(u, v)
        touched.update((u, v))
    for u, v in change.remove_edges:
        if not graph.has_edge(u, v):
            raise SpecError("change.remove_edges", (u, v), "edges present in the graph")
        graph.remove_edge(u, v)
        touched.update((u, v))
    for v in change.remove_vertices:
        if v not in graph:
            raise SpecError("change.remove_vertices", v, "vertices present in the graph")
        touched.update(graph.neighbors(v))
        graph.remove_node(v)
    return {v for v in touched if v in graph}


def neighbourhood(problem: LayoutProblem, seeds: np.ndarray, hops: int) -> np.ndarray:
    """(n,) bool: `seeds` (vertex indices) and everything within `hops` edges of them."""
    mask = np.zeros(problem.n, dtype=bool)
    mask[seeds] = True
    frontier = np.asarray(seeds, dtype=np.int64)
    for _ in range(hops):
        idx, _ = _gather(problem.indptr, frontier)
        nb = problem.nbr[idx]
        frontier = np.unique(nb[~mask[nb]])
        mask[frontier] = True
    return mask


@dataclass
class IncrementalResult:
    choice: np.ndarray  # (n,) candidate column per vertex, on the new problem
    energy: float  # evaluated after the timer stops
    affected: np.ndarray  # vertex indices (new problem) allowed to move
    changed: np.ndarray  # vertex indices whose location differs from the carried-over layout
    sweeps: int
    seconds: float


def incremental_update(old: LayoutProblem, old_choice: np.ndarray, new: LayoutProblem, touched,
                       hops: int = 1) -> IncrementalResult:
    """Re-optimize only around a change: start from the old layout (new vertices at their cheapest candidate) and
    run expansion moves over the touched vertices and their `hops`-hop neighbourhood, everyone else fixed; while
    moves reach the region's edge, the neighbours of the moved vertices join it and the moves run again. Both
    problems must share the tier network (the candidate columns mean the same locations)."""
    if hops < 0:
        raise SpecError("hops", hops, "an integer >= 0")
    if old.k != new.k or old.network.n_locations != new.network.n_locations:
        raise SpecError("new", "another tier network", "the old problem's tier network")
    start = time.perf_counter()
    size = int(max(old.nodes.max(), new.nodes.max())) + 1
    carried = np.full(size, -1, dtype=np.int64)
    carried[old.nodes] = old_choice
    choice = carried[new.nodes]
    fresh = choice < 0
    choice[fresh] = np.argmin(new.unary[fresh], axis=1)
    start_choice = choice.copy()
    where = np.full(size, -1, dtype=np.int64)
    where[new.nodes] = np.arange(new.n)
    touched = np.fromiter((int(v) for v in touched), dtype=np.int64)
    touched = touched[(touched < size)]
    seeds = np.union1d(where[touched][where[touched] >= 0], np.flatnonzero(fresh))
    mask = neighbourhood(new, seeds, hops)
    sweeps = 0
    while True:  # a vertex that moved may have left its fixed neighbours a better move: free them and go on
        r = alpha_expansion(new, init=choice, active=mask, evaluate=False)
        sweeps += r.sweeps
        moved = np.flatnonzero(r.choice != choice)
        choice = r.choice
        grown = mask | neighbourhood(new, moved, 1)
        if grown.sum() == mask.sum():
            break
        mask = grown
    seconds = time.perf_counter() - start
    return IncrementalResult(choice, new.energy(choice), np.flatnonzero(mask),
                             np.flatnonzero(choice != start_choice), sweeps, seconds)
