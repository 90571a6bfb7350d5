"""One fog node's piece of the graph and the steps of an inference over it, written once for both the
in-process reference (`partitioned_forward`) and the real workers (`fog_worker`).

A node owns some vertices and keeps every in-edge of each (global order, global GCN weights), so a layer
gives its owned rows exactly what the whole graph gives them. The sources of those edges that another node
owns are its halo: before each layer their current rows arrive from their owners. Local row order is owned
vertices (ascending id) then halo vertices (ascending id); every list two nodes exchange is in ascending
global id on both sides, so no ids travel, only (optionally compressed) feature rows.

One inference: (1) each raw feature row goes from the node that senses it to every node that reads it at
layer 0 (its owner, and the nodes that have it in their halo); layer 0 runs; (2) before each later layer the
halo rows come from their owners, then the layer runs on owned + halo rows and keeps the owned rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from edgepool.graph.compression import Codec
from edgepool.graph.partition import FogPlan

Payloads = dict[int, torch.Tensor]  # peer rank -> uint8 payload


@dataclass
class PartitionView:
    rank: int
    owned: torch.Tensor  # [o] global ids, ascending
    halo: torch.Tensor  # [h] global ids, ascending
    edge_index: torch.Tensor  # [2, e] local ids: every in-edge of every owned vertex
    edge_weight: torch.Tensor | None  # [e] the global weights of those edges (GCN) or None
    sensed: torch.Tensor = None  # local ids of the rows (owned or halo) whose data is sensed here
    raw_send: dict[int, torch.Tensor] = field(default_factory=dict)  # peer -> global ids sensed here it needs
    raw_recv: dict[int, torch.Tensor] = field(default_factory=dict)  # peer -> local ids of rows sensed there
    send: dict[int, torch.Tensor] = field(default_factory=dict)  # peer -> local ids of owned rows in its halo
    recv: dict[int, torch.Tensor] = field(default_factory=dict)  # peer -> local ids of halo rows it owns

    @property
    def global_ids(self) -> torch.Tensor:
        """[o + h] the global id of each local row."""
        return torch.cat([self.owned, self.halo])

    def describe(self) -> dict:
        return {"rank": self.rank, "owned": len(self.owned), "halo": len(self.halo), "edges": int(self.edge_index.shape[1]),
                "halo_peers": sorted(self.recv), "raw_in": int(sum(len(v) for v in self.raw_recv.values())),
                "raw_out": int(sum(len(v) for v in self.raw_send.values()))}


def build_views(edge_index: torch.Tensor, edge_weight: torch.Tensor | None, plan: FogPlan) -> list[PartitionView]:
    """One view per node of `plan`, in rank order.

    Layer 0 reads raw features, so its halo needs no exchange with the owners: the node that senses a vertex
    sends its raw row straight to every node that needs it (as owned or as halo) in the first phase, and
    halo rows travel from their owners only before layers 1 and up. One synchronisation fewer per inference.
    """
    owner, home = torch.as_tensor(plan.owner), torch.as_tensor(plan.home)
    n, k = len(owner), len(plan.nodes)
    src, dst = edge_index[0], edge_index[1]
    own_src, own_dst = owner[src], owner[dst]
    views, needs, locals_ = [], [], []
    for r in range(k):
        owned = torch.nonzero(owner == r).flatten()
        keep = own_dst == r
        halo = torch.unique(src[keep & (own_src != r)])
        local = torch.full((n,), -1, dtype=torch.int64)
        local[owned] = torch.arange(len(owned))
        local[halo] = len(owned) + torch.arange(len(halo))
        views.append(PartitionView(r, owned, halo, local[edge_index[:, keep]],
                                   None if edge_weight is None else edge_weight[keep]))
        needs.append(torch.sort(torch.cat([owned, halo])).values)  # every row r reads at layer 0, by global id
        locals_.append(local)
    for r, view in enumerate(views):
        view.sensed = locals_[r][needs[r][home[needs[r]] == r]]
        for p in range(k):
            if p == r:
                continue
            out = needs[p][home[needs[p]] == r]  # what p reads that is sensed here
            if len(out):
                view.raw_send[p] = out
            inc = needs[r][home[needs[r]] == p]
            if len(inc):
                view.raw_recv[p] = locals_[r][inc]
            mine = torch.unique(src[(own_src == r) & (own_dst == p)])  # my vertices in p's halo
            if len(mine):
                view.send[p] = locals_[r][mine]
            theirs = view.halo[owner[view.halo] == p]
            if len(theirs):
                view.recv[p] = locals_[r][theirs]
    return views


class FrameSteps:
    """The inference of one frame on one node, as phases between which payloads travel:
    raw rows, layer 0, then per later layer its halo rows and the layer."""

    def __init__(self, model, view: PartitionView, codec: Codec, degrees: torch.Tensor):
        self.model, self.view, self.codec, self.degrees = model, view, codec, degrees
        self.gids = view.global_ids
        self.inputs: torch.Tensor | None = None  # [o + h, F] what the next layer reads
        self.rows: torch.Tensor | None = None  # [o, F'] the owned vertices' latest output

    # -- sizes the receiver expects (it knows the degrees, hence every row's bit width)
    def raw_recv_bytes(self, width: int) -> dict[int, int]:
        return {p: self.codec.payload_bytes(self.degrees[self.gids[ids]], width) for p, ids in self.view.raw_recv.items()}

    def halo_recv_bytes(self, width: int) -> dict[int, int]:
        return {p: self.codec.payload_bytes(self.degrees[self.gids[ids]], width) for p, ids in self.view.recv.items()}

    # -- phase 1: raw features to every node that reads them
    def raw_payloads(self, x: torch.Tensor) -> Payloads:
        """`x`: [n, F] this frame's readings (a node only reads the rows sensed at it)."""
        return {p: self.codec.encode(x[ids], self.degrees[ids]) for p, ids in self.view.raw_send.items()}

    def take_raw(self, x: torch.Tensor, received: Payloads) -> None:
        inputs = torch.zeros(len(self.gids), x.shape[1])
        inputs[self.view.sensed] = x[self.gids[self.view.sensed]]
        for p, ids in self.view.raw_recv.items():
            inputs[ids] = self.codec.decode(received[p], self.degrees[self.gids[ids]], x.shape[1])
        self.inputs = inputs

    # -- later layers: halo rows from their owners
    def halo_payloads(self) -> Payloads:
        return {p: self.codec.encode(self.rows[ids], self.degrees[self.gids[ids]]) for p, ids in self.view.send.items()}

    def take_halo(self, received: Payloads) -> None:
        inputs = torch.zeros(len(self.gids), self.rows.shape[1])
        inputs[:len(self.view.owned)] = self.rows
        for p, ids in self.view.recv.items():
            inputs[ids] = self.codec.decode(received[p], self.degrees[self.gids[ids]], self.rows.shape[1])
        self.inputs = inputs

    def layer(self, i: int) -> None:
        with torch.no_grad():
            out = self.model.layer(i, self.inputs, self.view.edge_index, self.view.edge_weight)
        self.rows = out[:len(self.view.owned)]


def _deliver(outgoing: list[Payloads]) -> list[Payloads]:
    """In-process delivery: what rank r sent to p arrives at p from r."""
    incoming: list[Payloads] = [{} for _ in outgoing]
    for r, payloads in enumerate(outgoing):
        for p, payload in payloads.items():
            incoming[p][r] = payload
    return incoming


def partitioned_forward(model, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None,
                        plan: FogPlan, codec: Codec | None = None, degrees: torch.Tensor | None = None) -> torch.Tensor:
    """[n, C]: the plan's inference run node by node in this process, payloads handed over in memory.
    The reference the distributed run must reproduce, and how compression error is measured."""
    codec = codec or Codec()
    degrees = degrees if degrees is not None else torch.bincount(edge_index[1], minlength=len(x))
    steps = [FrameSteps(model, v, codec, degrees) for v in build_views(edge_index, edge_weight, plan)]
    arrived = _deliver([s.raw_payloads(x) for s in steps])
    for s, got in zip(steps, arrived):
        s.take_raw(x, got)
    for i in range(model.num_layers):
        if i > 0:
            arrived = _deliver([s.halo_payloads() for s in steps])
            for s, got in zip(steps, arrived):
                s.take_halo(got)
        for s in steps:
            s.layer(i)
    out = torch.empty(len(x), steps[0].rows.shape[1] if steps[0].rows is not None else 0)
    for s in steps:
        out[s.view.owned] = s.rows
    return out

