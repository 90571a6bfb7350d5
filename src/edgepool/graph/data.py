"""Graphs for GNN work that load offline: one real graph that ships in an installed package, and generators
with the shape of the settings Fograph targets.

- `karate`: Zachary's karate club (34 members, 78 friendships, the two clubs it split into as labels), the
  real graph that ships inside `networkx` (`networkx.karate_club_graph`). No vertex features come with it:
  each vertex gets its (normalised) adjacency row.
- `sensor`: a random geometric graph in the unit square (generated): sensors within radio range are linked,
  as in traffic or environment sensor networks (Fograph's PeMS-like setting).
- `road`: a road-like grid (generated): a 2-D lattice with 10% of its streets removed and its crossings
  jittered.
- `sbm`: a stochastic block model (generated): communities that link more inside than across.

Generated graphs get labels from their structure (`sensor` and `road`: the zone of a smooth spatial field the
vertex lies in; `sbm`: its block) and features that are the label's pattern buried in noise, so that one
vertex's own features are a weak guess and aggregating its neighbours' (which is what a GNN does) helps.
Every vertex has a position (`pos`, unit square): where its data is sensed, which the fog planner reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from edgepool.errors import SpecError

GRAPHS = ("karate", "sensor", "road", "sbm")
SENSOR_DEGREE = 8.0  # neighbours per sensor on average
REAL_GRAPHS = {"karate": "Zachary's karate club, shipped in networkx (networkx.karate_club_graph)"}


@dataclass
class GraphTask:
    """A node-classification graph. Edges are stored in both directions (`edge_index` [2, 2m])."""

    name: str
    source: str  # where the graph comes from: a real data set and its package, or the generator and its seed
    x: torch.Tensor  # [n, F] float32 vertex features
    edge_index: torch.Tensor  # [2, E] int64, source row 0 -> target row 1, sorted by target
    y: torch.Tensor  # [n] int64 labels
    pos: np.ndarray  # [n, 2] where each vertex's data is sensed (unit square)
    train_mask: torch.Tensor  # [n] bool
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        """Undirected edges."""
        return int(self.edge_index.shape[1]) // 2

    @property
    def real(self) -> bool:
        return self.name in REAL_GRAPHS

    def degrees(self) -> torch.Tensor:
        """[n] in-degree of every vertex (= its degree: edges go both ways)."""
        return torch.bincount(self.edge_index[1], minlength=self.num_nodes)

    def describe(self) -> dict:
        return {"graph": self.name, "source": self.source, "real": self.real, "vertices": self.num_nodes,
                "edges": self.num_edges, "features": int(self.x.shape[1]), "classes": self.num_classes,
                "mean_degree": round(2 * self.num_edges / max(self.num_nodes, 1), 2)}


def load_graph(name: str, num_nodes: int = 10_000, features: int = 32, classes: int = 4, seed: int = 0) -> GraphTask:
    """One of GRAPHS (`num_nodes`, `features`, `classes` apply to the generated ones)."""
    if name not in GRAPHS:
        raise SpecError(field="graph", value=name, accepted=", ".join(GRAPHS))
    if name != "karate" and not 16 <= num_nodes <= 1_000_000:
        raise SpecError(field="vertices", value=num_nodes, accepted="16 to 1,000,000")
    rng = np.random.default_rng(seed)
    if name == "karate":
        return _karate(seed)
    if name == "sensor":
        g = sensor_network(num_nodes, seed)
        pos = np.array([g.nodes[i]["pos"] for i in range(num_nodes)])
        labels = _spatial_zones(pos, classes, rng)
        source = f"generated: random geometric graph (networkx), {SENSOR_DEGREE:g} neighbours on average, seed {seed}"
    elif name == "road":
        side = max(int(round(math.sqrt(num_nodes))), 4)
        g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(side, side), ordering="sorted")
        drop = [e for e in g.edges if rng.random() < 0.1]
        g.remove_edges_from(drop)
        grid = np.array([(i // side, i % side) for i in range(side * side)], dtype=float)
        pos = (grid + rng.uniform(-0.3, 0.3, grid.shape) + 0.5) / side
        labels = _spatial_zones(pos, classes, rng)
        source = f"generated: {side}x{side} grid, 10% of streets removed, seed {seed}"
    else:
        sizes = [num_nodes // classes + (1 if i < num_nodes % classes else 0) for i in range(classes)]
        inside, across = 10.0 / (num_nodes / classes), 2.0 / num_nodes
        probs = [[inside if i == j else across for j in range(classes)] for i in range(classes)]
        g = nx.stochastic_block_model(sizes, probs, seed=seed)
        labels = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)])
        pos = rng.uniform(0, 1, (len(labels), 2))
        source = f"generated: stochastic block model, {classes} blocks, seed {seed}"
    x = _noisy_features(labels, classes, features, rng)
    return _task(name, source, g, x, labels, pos, classes, rng)


def sensor_network(num_nodes: int, seed: int = 0, mean_degree: float = SENSOR_DEGREE) -> nx.Graph:
    """Sensors at random in the unit square, linked when within radio range (node attribute "pos"); the range
    is set for `mean_degree` neighbours on average."""
    if int(num_nodes) < 1:
        raise SpecError(field="vertices", value=num_nodes, accepted="1 or more")
    return nx.random_geometric_graph(int(num_nodes), sensor_radius(num_nodes, mean_degree), seed=seed)


def sensor_radius(num_nodes: int, mean_degree: float = SENSOR_DEGREE) -> float:
    """The radio range that gives `mean_degree` neighbours on average in the unit square."""
    return math.sqrt(mean_degree / (math.pi * max(int(num_nodes), 1)))


def _karate(seed: int) -> GraphTask:
    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    labels = np.array([0 if g.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(n)])
    adjacency = nx.to_numpy_array(g, nodelist=range(n), weight=None) + np.eye(n)
    x = adjacency / adjacency.sum(1, keepdims=True)
    pos = np.array([nx.spring_layout(g, seed=seed)[i] for i in range(n)])
    pos = (pos - pos.min(0)) / np.ptp(pos, 0)
    return _task("karate", REAL_GRAPHS["karate"], g, x, labels, pos, 2, np.random.default_rng(seed))


def _spatial_zones(pos: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """The class whose random bump is highest at each point: zones that neighbouring sensors share."""
    centres = rng.uniform(0, 1, (classes * 3, 2))
    owners = np.arange(len(centres)) % classes
    d2 = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)  # [n, bumps]
    field = np.exp(-d2 / 0.02)
    score = np.zeros((len(pos), classes))
    np.add.at(score.T, owners, field.T)
    return score.argmax(1)


def _noisy_features(labels: np.ndarray, classes: int, features: int, rng: np.random.Generator) -> np.ndarray:
    """Each class a random unit pattern; a vertex's features are its pattern plus noise four times its size."""
    patterns = rng.normal(size=(classes, features))
    patterns /= np.linalg.norm(patterns, axis=1, keepdims=True)
    noise = rng.normal(scale=4.0 / math.sqrt(features), size=(len(labels), features))
    return patterns[labels] + noise


def _task(name: str, source: str, g: nx.Graph, x: np.ndarray, labels: np.ndarray, pos: np.ndarray,
          classes: int, rng: np.random.Generator) -> GraphTask:
    edges = np.array([(u, v) for u, v in g.edges if u != v], dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([edges, edges[:, ::-1]])
    both = both[np.lexsort((both[:, 0], both[:, 1]))]  # by target, then source
    n = len(labels)
    train = np.zeros(n, dtype=bool)
    train[rng.permutation(n)[: max(int(0.3 * n), classes)]] = True
    return GraphTask(name=name, source=source, x=torch.tensor(x, dtype=torch.float32),
                     edge_index=torch.from_numpy(np.ascontiguousarray(both.T)), y=torch.tensor(labels, dtype=torch.int64),
                     pos=np.asarray(pos, dtype=float), train_mask=torch.from_numpy(train), num_classes=classes)
