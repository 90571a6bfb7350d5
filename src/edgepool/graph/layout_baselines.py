"""Baseline layouts, each a location id per vertex, priced by the same cost model as the graph-cut layout.

all-cloud and nearest-tier are the de facto deployments; METIS is the classic balanced min-edge-cut partitioner;
random is the floor (a candidate per vertex uniformly at random); the exact integer program (HiGHS through
scipy.optimize.milp) is the optimum on small graphs, which measures graph-cut's approximation gap.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from edgepool.errors import SpecError
from edgepool.graph.layout_cost import LayoutProblem
from edgepool.graph.partition import metis_csr

EXACT_MAX_VERTICES = 60  # HiGHS solves 30-vertex instances in well under a second; 60 keeps a test run short
EXACT_MAX_VARIABLES = 400_000  # n x K binaries + m x K^2 pair variables (K = edge servers + 2)
BRUTE_FORCE_MAX_LAYOUTS = 300_000  # K^n layouts, e.g. 4^9 = 262,144 with 2 edge servers


def all_cloud(problem: LayoutProblem) -> np.ndarray:
    """Every vertex in the cloud: the conventional deployment (sensors upload, the cloud runs the GNN)."""
    return np.full(problem.n, problem.network.cloud, dtype=np.int64)


def nearest_tier(problem: LayoutProblem) -> np.ndarray:
    """Every vertex on its home device's edge server: the nearest tier that can run a GNN in the usual edge-computing
    deployment (end devices sense and offload; they are not asked to compute)."""
    return problem.home_edge.copy()


def random_layout(problem: LayoutProblem, seed: int = 0) -> np.ndarray:
    """Each vertex at one of its candidates (home device, any edge server, cloud), uniformly at random (seeded)."""
    choice = np.random.default_rng(seed).integers(0, problem.k, problem.n)
    return problem.locations(choice)


def metis_layout(problem: LayoutProblem, seed: int = 0) -> np.ndarray:
    """pymetis cuts the graph into one part per edge server (balanced, few cut edges); each part goes to the edge
    server that is home to most of its vertices. Vertices may land on an edge server other than their own: the
    cost model prices that (uploads and exchanges then cross the backhaul); every edge server is a candidate of
    every vertex, so the layout lies in graph-cut's search space."""
    p = problem
    E, D = p.network.n_edge, p.network.n_devices
    if E == 1 or p.n <= E or len(p.edges) == 0:
        return nearest_tier(p)
    parts = metis_csr(p.indptr, p.nbr, E, int(seed))
    home_edge = p.home_edge - D
    votes = np.zeros((E, E), dtype=np.int64)  # part x edge server
    np.add.at(votes, (parts, home_edge), 1)
    server = D + votes.argmax(axis=1)
    return server[parts]


@dataclass
class ExactResult:
    choice: np.ndarray  # (n,) candidate column per vertex
    energy: float  # $ per inference
    optimal: bool  # HiGHS proved optimality (False: time limit hit, best found returned)
    status: str
    seconds: float


def exact_layout(problem: LayoutProblem, time_limit_s: float = 60.0,
                 max_vertices: int = EXACT_MAX_VERTICES) -> ExactResult:
    """The optimum over every vertex's K candidates (home device, each edge server, cloud) by a 0-1 integer
    program (HiGHS).

    x[v, a] in {0, 1} (one binary per candidate), sum_a x[v, a] = 1; for each graph edge (u, v) a pair variable
    y[e, a, b] >= 0 per candidate pair with sum_b y[e, a, b] = x[u, a] and sum_a y[e, a, b] = x[v, b] (the local
    marginal polytope): with x integral, y is exactly x[u] x x[v]^T, so the objective sum y x bytes x path price
    is the layout's exchange cost. Its LP relaxation is the standard tight one for metric labelling."""
    p = problem
    if p.n > max_vertices:
        raise SpecError("graph size", p.n, f"at most {max_vertices} vertices for the exact integer program",
                        hint="use method='graphcut' for larger graphs")
    n, m, K = p.n, len(p.edges), p.k
    nx_, ny = n * K, m * K * K
    if nx_ + ny > EXACT_MAX_VARIABLES:
        raise SpecError("graph size", f"{n} vertices, {m} edges, {K} candidates",
                        f"at most {EXACT_MAX_VARIABLES:,} integer-program variables (n K + m K^2)",
                        hint="use method='graphcut' for larger graphs")
    start = time.perf_counter()
    u, v = p.edges[:, 0], p.edges[:, 1]
    # (m, K, K) price of each edge for each candidate pair
    price = p.edge_bytes[:, None, None] * p.dist[p.cand[u][:, :, None], p.cand[v][:, None, :]]
    scale = 1.0 / max(float(p.unary.mean()), 1e-300)  # O(1) objective for HiGHS' tolerances
    c = np.concatenate([p.unary.ravel(), price.ravel()]) * scale
    yid = nx_ + np.arange(ny).reshape(m, K, K)
    e_ = np.arange(m)[:, None, None]
    a_ = np.arange(K)[None, :, None]
    b_ = np.arange(K)[None, None, :]
    shape_ = (m, K, K)
    # rows: n "one candidate" rows, then m K rows "sum_b y = x[u, a]", then m K rows "sum_a y = x[v, b]"
    row_u = n + np.broadcast_to(e_ * K + a_, shape_).ravel()
    row_v = n + m * K + np.broadcast_to(e_ * K + b_, shape_).ravel()
    xu_cols = (u[:, None] * K + np.arange(K)).ravel()
    xv_cols = (v[:, None] * K + np.arange(K)).ravel()
    rows = np.concatenate([np.repeat(np.arange(n), K), row_u, row_v, n + np.arange(m * K),
                           n + m * K + np.arange(m * K)])
    cols = np.concatenate([np.arange(nx_), yid.ravel(), yid.ravel(), xu_cols, xv_cols])
    vals = np.concatenate([np.ones(nx_), np.ones(ny), np.ones(ny), -np.ones(m * K), -np.ones(m * K)])
    A = coo_matrix((vals, (rows, cols)), shape=(n + 2 * m * K, nx_ + ny)).tocsr()
    rhs = np.concatenate([np.ones(n), np.zeros(2 * m * K)])
    integrality = np.concatenate([np.ones(nx_), np.zeros(ny)])
    res = milp(c, constraints=[LinearConstraint(A, rhs, rhs)], integrality=integrality, bounds=Bounds(0, 1),
               options={"time_limit": float(time_limit_s), "mip_rel_gap": 1e-9})
    if res.x is None:
        raise RuntimeError(f"the exact integer program found no layout: {res.message}")
    choice = res.x[:nx_].reshape(n, K).argmax(axis=1).astype(np.int64)
    return ExactResult(choice, p.energy(choice), res.status == 0, str(res.message), time.perf_counter() - start)


def brute_force_layout(problem: LayoutProblem) -> tuple[np.ndarray, float]:
    """Every one of the K^n layouts (tiny graphs only; K = edge servers + 2), evaluated in vectorized chunks: the
    reference the tests hold the solvers to."""
    p = problem
    total = p.k ** p.n
    if total > BRUTE_FORCE_MAX_LAYOUTS:
        raise SpecError("graph size", f"{p.n} vertices x {p.k} candidates",
                        f"at most {BRUTE_FORCE_MAX_LAYOUTS:,} layouts (K^n) for brute force")
    best, best_e = None, np.inf
    powers = p.k ** np.arange(p.n - 1, -1, -1)
    for lo in range(0, total, 32_768):
        codes = np.arange(lo, min(total, lo + 32_768))
        choices = (codes[:, None] // powers) % p.k  # (B, n) every layout, base-K digits
        e = p.energies(choices)
        i = int(np.argmin(e))
        if e[i] < best_e:
            best, best_e = choices[i].astype(np.int64), float(e[i])
    return best, float(best_e)
