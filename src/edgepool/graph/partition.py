"""Which fog node owns which vertex: Fograph's heterogeneity- and locality-aware plan, and its baselines.

A vertex's data is sensed near one fog node (its *home*, the nearest node). The owner computes the vertex's
GNN layers; when owner != home its raw features travel first. Fograph's plan (`fograph_partition`):
1. METIS (`pymetis`) cuts the graph into many small connected blocks (`blocks_per_node` per node), so that
   what a node owns is a few tight regions with little boundary;
2. blocks go to nodes greedily, each block to the node that senses most of its vertices while that node has
   room, where a node's room is its share of the vertices in proportion to its speed (heterogeneity);
3. a boundary refinement moves single vertices from nodes over their share to neighbouring nodes under it,
   preferring vertices sensed at the receiver, until every load is within `tolerance` of its share.
Baselines: `even_partition` (METIS into equal parts handed to nodes in order: plain fog deployment, blind to
speed and to where data is sensed) and `cloud_plan` (every vertex owned by the cloud: cloud serving).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepool.errors import SpecError


@dataclass
class FogPlan:
    """The decision: an owner per vertex among `nodes` (rank order). Serialisable to JSON."""

    method: str
    nodes: list[str]  # rank order; the cloud, when present, is one of them
    owner: np.ndarray  # [n] index into nodes
    home: np.ndarray  # [n] index into nodes: where the vertex's data is sensed
    speeds: list[float] = field(default_factory=list)  # per node, what the shares follow (cores)
    estimate_s: float | None = None  # the planner's estimate of one inference (plan_fograph)
    mix: float | None = None  # plan_fograph's chosen mix of speed and sensed shares

    def loads(self) -> list[int]:
        return np.bincount(self.owner, minlength=len(self.nodes)).tolist()

    def locality(self) -> float:
        """Fraction of vertices computed where their data is sensed."""
        return float(np.mean(self.owner == self.home))

    def cut_edges(self, edge_index) -> int:
        """Directed edges whose ends have different owners (each is a halo feature sent per layer)."""
        src, dst = np.asarray(edge_index[0]), np.asarray(edge_index[1])
        return int(np.sum(self.owner[src] != self.owner[dst]))

    def imbalance(self) -> float:
        """max over nodes of load / speed, over the same for perfectly speed-proportional loads (1 = ideal)."""
        loads = np.array(self.loads(), dtype=float)
        speeds = np.array(self.speeds or [1.0] * len(self.nodes), dtype=float)
        busy = speeds > 0
        ideal = loads.sum() / speeds[busy].sum()
        return float(np.max(loads[busy] / speeds[busy]) / ideal) if ideal else 1.0

    def describe(self, edge_index=None) -> dict:
        out = {"method": self.method, "nodes": self.nodes, "loads": self.loads(), "locality": round(self.locality(), 4),
               "imbalance": round(self.imbalance(), 4), "speeds": self.speeds, "estimate_s": self.estimate_s,
               "mix": self.mix}
        if edge_index is not None:
            out["cut_edges"] = self.cut_edges(edge_index)
        return out

    def to_dict(self) -> dict:
        return {"method": self.method, "nodes": self.nodes, "owner": self.owner.tolist(), "home": self.home.tolist(),
                "speeds": self.speeds}

    @classmethod
    def from_dict(cls, data: dict) -> "FogPlan":
        return cls(data["method"], list(data["nodes"]), np.asarray(data["owner"], dtype=np.int64),
                   np.asarray(data["home"], dtype=np.int64), list(data.get("speeds", [])))


def nearest_homes(pos: np.ndarray, node_pos: np.ndarray) -> np.ndarray:
    """[n] index of the nearest sensing node to each vertex position."""
    d2 = ((np.asarray(pos)[:, None, :] - np.asarray(node_pos)[None]) ** 2).sum(-1)
    return d2.argmin(1)


def _adjacency(edge_index, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (xadj, adjncy) of the graph, both directions, no self-loops: what METIS reads."""
    src, dst = np.asarray(edge_index[0]), np.asarray(edge_index[1])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    xadj = np.zeros(n + 1, dtype=np.int64)
    np.add.at(xadj, src + 1, 1)
    return np.cumsum(xadj), dst.astype(np.int64)


def metis_parts(edge_index, n: int, parts: int, seed: int = 0) -> np.ndarray:
    """[n] METIS part of each vertex (k-way, balanced vertex counts)."""
    if parts <= 1:
        return np.zeros(n, dtype=np.int64)
    return metis_csr(*_adjacency(edge_index, n), parts, seed)


def metis_csr(xadj: np.ndarray, adjncy: np.ndarray, parts: int, seed: int = 0) -> np.ndarray:
    """METIS (`pymetis`, k-way, balanced vertex counts) on a graph given as CSR, both directions, no self-loops."""
    import pymetis

    _, membership = pymetis.part_graph(parts, pymetis.CSRAdjacency(xadj, adjncy), options=pymetis.Options(seed=seed))
    return np.asarray(membership, dtype=np.int64)


def _check_speeds(nodes: list[str], speeds: list[float]) -> None:
    if len(nodes) != len(speeds) or not nodes:
        raise SpecError(field="speeds", value=speeds, accepted=f"one positive speed per node ({len(nodes)} nodes)")
    if any(s < 0 for s in speeds) or sum(speeds) <= 0:
        raise SpecError(field="speeds", value=speeds, accepted="non-negative numbers, at least one positive")


@dataclass(frozen=True)
class FogCosts:
    """What the planner weighs, per vertex on one host core: compute seconds of the model, bytes of its raw
    features on the wire (after compression) and the seconds to encode plus decode them; and the LAN's
    bytes/s between fog nodes."""

    seconds_per_vertex: float
    bytes_per_vertex: float
    lan_bytes_per_s: float
    coding_seconds_per_vertex: float = 0.0

    def estimate(self, plan: FogPlan) -> float:
        """Seconds one inference takes by this model: the slowest node's raw features in or out (owned
        vertices sensed elsewhere; halo rows, few next to these, are left out), their encoding or decoding,
        and its compute, both at its speed."""
        k = len(plan.nodes)
        moved = plan.owner != plan.home
        into = np.bincount(plan.owner[moved], minlength=k)
        out = np.bincount(plan.home[moved], minlength=k)
        transfer = np.maximum(into, out) * self.bytes_per_vertex / self.lan_bytes_per_s
        work = np.bincount(plan.owner, minlength=k) * self.seconds_per_vertex + (into + out) * self.coding_seconds_per_vertex
        speeds = np.asarray(plan.speeds, dtype=float)
        # a node the plan gives no share (the cloud) still senses nothing, so only its transfers count
        compute = np.where(speeds > 0, work / np.where(speeds > 0, speeds, 1), 0.0)
        return float(np.max(transfer + compute))


def plan_fograph(edge_index, home: np.ndarray, nodes: list[str], speeds: list[float], costs: FogCosts,
                 mixes: int = 11, seed: int = 0) -> FogPlan:
    """Fograph's execution planning: each node's share is a mix of its speed share and the share of the data
    sensed at it, `m * speed + (1 - m) * sensed` for m in [0, 1]; the mix whose plan `costs` estimates fastest
    wins (all speed: every node busy for the same time but much raw data moves; all sensed: nothing moves
    but the slow nodes compute most)."""
    _check_speeds(nodes, speeds)
    home = np.asarray(home, dtype=np.int64)
    sensed = np.bincount(home, minlength=len(nodes)) / len(home)
    speed_share = np.asarray(speeds, dtype=float) / sum(speeds)
    best, best_s = None, float("inf")
    for m in np.linspace(0.0, 1.0, mixes):
        share = m * speed_share + (1 - m) * np.where(speed_share > 0, sensed, 0.0)
        plan = fograph_partition(edge_index, home, nodes, speeds, share=share / share.sum(), seed=seed)
        estimate = costs.estimate(plan)
        if estimate < best_s:
            best, best_s = plan, estimate
            best.estimate_s, best.mix = estimate, float(m)
    return best


def fograph_partition(edge_index, home: np.ndarray, nodes: list[str], speeds: list[float],
                      share: np.ndarray | None = None, blocks_per_node: int = 16, tolerance: float = 0.03,
                      seed: int = 0) -> FogPlan:
    """METIS blocks placed by locality under each node's `share` of the vertices (default: its speed share),
    then refined."""
    _check_speeds(nodes, speeds)
    home = np.asarray(home, dtype=np.int64)
    n, k = len(home), len(nodes)
    share = np.asarray(speeds, dtype=float) / sum(speeds) if share is None else np.asarray(share, dtype=float)
    target = share * n
    blocks = metis_parts(edge_index, n, max(k * blocks_per_node, 1), seed)
    nblocks = int(blocks.max()) + 1
    sensed = np.zeros((nblocks, k), dtype=np.int64)  # vertices of block b sensed at node j
    np.add.at(sensed, (blocks, home), 1)
    size = sensed.sum(1)
    owner_of_block = np.full(nblocks, -1)
    load = np.zeros(k)
    # (block, node) pairs by how many of the block's vertices the node senses, most first
    pairs = sorted(((int(sensed[b, j]), b, j) for b in range(nblocks) for j in range(k) if share[j] > 0), reverse=True)
    for _, b, j in pairs:
        if owner_of_block[b] < 0 and load[j] + size[b] <= target[j] * (1 + tolerance):
            owner_of_block[b], load[j] = j, load[j] + size[b]
    for b in np.flatnonzero(owner_of_block < 0):  # what did not fit: the node with the most room left
        j = int(np.argmax(np.where(share > 0, target - load, -np.inf)))
        owner_of_block[b], load[j] = j, load[j] + size[b]
    owner = owner_of_block[blocks]
    owner = _refine(edge_index, owner, home, target, tolerance)
    return FogPlan("fograph", list(nodes), owner, home, list(map(float, speeds)))


def _refine(edge_index, owner: np.ndarray, home: np.ndarray, target: np.ndarray, tolerance: float,
            max_rounds: int = 50) -> np.ndarray:
    """Move boundary vertices from overloaded nodes to the underloaded nodes they touch (receiver-sensed first)."""
    owner = owner.copy()
    src, dst = np.asarray(edge_index[0]), np.asarray(edge_index[1])
    k = len(target)
    for _ in range(max_rounds):
        load = np.bincount(owner, minlength=k).astype(float)
        over = load - target * (1 + tolerance)
        if np.all(over <= 0):
            break
        moved = False
        for giver in np.flatnonzero(over > 0):
            need = int(np.ceil(load[giver] - target[giver]))
            # boundary edges: u owned by giver, its neighbour owned by an underloaded node
            cross = (owner[src] == giver) & (owner[dst] != giver)
            taker = owner[dst[cross]]
            room = target[taker] - load[taker]
            ok = room > 0
            cand_v, cand_t = src[cross][ok], taker[ok]
            if not len(cand_v):
                continue
            prefer = (home[cand_v] == cand_t).astype(int)
            order = np.lexsort((cand_v, -prefer))
            seen: set[int] = set()
            for i in order:
                v, t = int(cand_v[i]), int(cand_t[i])
                if v in seen or load[t] >= target[t] or need <= 0:
                    continue
                seen.add(v)
                owner[v], load[giver], load[t], need = t, load[giver] - 1, load[t] + 1, need - 1
                moved = True
        if not moved:
            break
    return owner


def even_partition(edge_index, home: np.ndarray, nodes: list[str], use: list[str] | None = None,
                   seed: int = 0) -> FogPlan:
    """Plain fog deployment: METIS into equal parts, one per node of `use` (default: all) in order, blind to
    speed and to where data is sensed."""
    use = list(use or nodes)
    unknown = [u for u in use if u not in nodes]
    if unknown:
        raise SpecError(field="use", value=unknown, accepted=", ".join(nodes))
    home = np.asarray(home, dtype=np.int64)
    part = metis_parts(edge_index, len(home), len(use), seed)
    owner = np.array([nodes.index(u) for u in use], dtype=np.int64)[part]
    return FogPlan("even-fog", list(nodes), owner, home, [1.0 if n in use else 0.0 for n in nodes])


def cloud_plan(home: np.ndarray, nodes: list[str], cloud: str) -> FogPlan:
    """Cloud serving: every vertex's features are uploaded to `cloud`, which computes the whole graph."""
    if cloud not in nodes:
        raise SpecError(field="cloud", value=cloud, accepted=", ".join(nodes))
    home = np.asarray(home, dtype=np.int64)
    owner = np.full(len(home), nodes.index(cloud), dtype=np.int64)
    return FogPlan("cloud", list(nodes), owner, home, [1.0 if n == cloud else 0.0 for n in nodes])
