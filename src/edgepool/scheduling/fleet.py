"""`Fleet`: a cluster seen by a scheduler: each node's sustained speed and power, and the links between nodes.

Speeds come from `CostModel.effective_flops` in the power mode the cluster sets, so a cost model calibrated on
this machine (`CostModel.calibrate`) carries into every scheduling environment unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.device import Device, PowerMode


@dataclass(frozen=True)
class Node:
    """One schedulable node: its catalog device, the power mode the cluster sets, sustained FLOP/s there, and
    power busy and idle (watts)."""

    name: str
    device: Device
    mode: PowerMode | None
    flops: float
    power_busy_w: float
    power_idle_w: float


@dataclass
class Fleet:
    """Nodes in cluster order; `bandwidth[i, j]` in bytes/s and `latency[i, j]` in seconds (inf and 0 on i == j)."""

    nodes: list[Node]
    bandwidth: np.ndarray
    latency: np.ndarray
    cost_model: CostModel = field(default_factory=CostModel)
    locations: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_cluster(cls, cluster: Cluster, cost_model: CostModel | None = None) -> "Fleet":
        cost_model = cost_model or CostModel()
        nodes = []
        for name, device in cluster.devices.items():
            mode = device.mode(cluster.power_modes.get(name))
            nodes.append(Node(name=name, device=device, mode=mode,
                              flops=cost_model.effective_flops(device, mode=mode),
                              power_busy_w=cost_model.power(device, 1.0, mode),
                              power_idle_w=cost_model.power(device, 0.0, mode)))
        n = len(nodes)
        bandwidth, latency = np.full((n, n), np.inf), np.zeros((n, n))
        for i, a in enumerate(nodes):
            for j, b in enumerate(nodes):
                if i != j:
                    link = cluster.link(a.name, b.name)
                    bandwidth[i, j], latency[i, j] = link.bandwidth, link.latency_s
        return cls(nodes=nodes, bandwidth=bandwidth, latency=latency, cost_model=cost_model,
                   locations=dict(cluster.locations))

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def index(self, name: str) -> int:
        return self.names.index(name)

    @property
    def speeds(self) -> np.ndarray:
        """Sustained FLOP/s per node, in node order."""
        return np.array([n.flops for n in self.nodes])

    def compute_s(self, node: int, flops: float, bytes_moved: float = 0.0, precision: str | None = None) -> float:
        """Roofline time of `flops` on a node: `CostModel.compute_time` at the node's power mode (the cost
        model's precision unless `precision` is given)."""
        n = self.nodes[node]
        return self.cost_model.compute_time(flops, bytes_moved, n.device, precision, n.mode)

    def transfer_s(self, src: int, dst: int, nbytes: float) -> float:
        """Latency plus bytes over the route's bottleneck bandwidth; nothing when the data stays put."""
        if src == dst or nbytes <= 0:
            return 0.0
        return float(self.latency[src, dst] + nbytes / self.bandwidth[src, dst])
