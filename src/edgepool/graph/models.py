"""GCN, GraphSAGE and GAT from PyTorch Geometric, built so one layer can run on a piece of the graph.

A fog node holds only its vertices and a halo of their neighbours, so a layer must give its owned vertices
exactly what it gives them on the whole graph. Two things make that true:
- GCN's symmetric normalisation needs both ends' degrees; a halo vertex's degree is not visible locally. The
  weights are computed once on the whole graph (`edge_weights`) and passed with each edge
  (`GCNConv(normalize=False)`), so a partition reuses the global weights of its edges.
- GraphSAGE (mean) and GAT (softmax over a vertex's in-edges) only read a vertex's own in-edges, which the
  partition keeps whole for every owned vertex.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgepool.errors import SpecError

KINDS = ("gcn", "sage", "gat")


class GNN(nn.Module):
    """`layers` PyG convolutions with ReLU between them; `layer(i, ...)` runs one (what a fog node does)."""

    def __init__(self, kind: str, in_dim: int, hidden: int, out_dim: int, layers: int = 2, heads: int = 2):
        super().__init__()
        from torch_geometric.nn import GATConv, GCNConv, SAGEConv

        if kind not in KINDS:
            raise SpecError(field="model", value=kind, accepted=", ".join(KINDS))
        if layers < 1:
            raise SpecError(field="layers", value=layers, accepted="1 or more")
        self.kind, self.dims = kind, [in_dim] + [hidden] * (layers - 1) + [out_dim]
        convs = []
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            last = i == layers - 1
            if kind == "gcn":
                convs.append(GCNConv(a, b, normalize=False, add_self_loops=False))
            elif kind == "sage":
                convs.append(SAGEConv(a, b, aggr="mean"))
            else:  # multi-head attention concatenated inside, averaged at the output
                convs.append(GATConv(a, b if last else b // heads, heads=1 if last else heads))
        self.convs = nn.ModuleList(convs)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def layer(self, i: int, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None):
        """[N, dims[i]] -> [N, dims[i+1]]: layer i over the edges given (only their targets' rows are right)."""
        conv = self.convs[i]
        out = conv(x, edge_index, edge_weight) if self.kind == "gcn" else conv(x, edge_index)
        return out if i == self.num_layers - 1 else F.relu(out)

    def forward(self, x, edge_index, edge_weight=None):
        for i in range(self.num_layers):
            x = self.layer(i, x, edge_index, edge_weight)
        return x


def edge_weights(kind: str, edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The edges a `kind` model runs on, and their weights: GCN gets self-loops and D^-1/2 (A+I) D^-1/2
    computed on the whole graph, in target order; the others run on the edges as they are, unweighted."""
    if kind != "gcn":
        return edge_index, None
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import sort_edge_index

    index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    index, weight = sort_edge_index(index, weight, num_nodes=num_nodes, sort_by_row=False)
    return index, weight


@dataclass
class TrainedGNN:
    model: GNN
    edge_index: torch.Tensor  # what `model` runs on (GCN: with self-loops)
    edge_weight: torch.Tensor | None
    test_accuracy: float
    train_seconds: float

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """[n, C] logits over the whole graph, in one process: the reference a distributed run must match."""
        with torch.no_grad():
            return self.model.eval()(x, self.edge_index, self.edge_weight)


def train_gnn(task, kind: str = "gcn", hidden: int = 64, layers: int = 2, epochs: int = 100,
              lr: float = 0.01, seed: int = 0) -> TrainedGNN:
    """Full-graph training on the task's train mask; accuracy on the other vertices."""
    torch.manual_seed(seed)
    model = GNN(kind, task.x.shape[1], hidden, task.num_classes, layers)
    index, weight = edge_weights(kind, task.edge_index, task.num_nodes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(task.x, index, weight)[task.train_mask], task.y[task.train_mask])
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    trained = TrainedGNN(model.eval(), index, weight, 0.0, seconds)
    test = ~task.train_mask
    trained.test_accuracy = float((trained.predict(task.x).argmax(1)[test] == task.y[test]).float().mean())
    return trained
