"""The cost of one GNN inference when a graph's vertices are laid out over a device / edge / cloud hierarchy.

Following the multi-tier GNN layout problem over distributed edge servers (arXiv 2210.17281): every vertex's
data is sensed by its home end device; the vertex's GNN work (and the state it keeps) may run on that device, on
ANY edge server, or in the cloud: E + 2 candidates per vertex (`LayoutProblem.cand`, columns: 0 the home device,
1..E edge servers 0..E-1, E + 1 the cloud). A layout pays
  - unary(v, location): compute of v's GNN layers at that tier + storage of v's features there + moving v's
    freshly sensed input from its home device to that location (to an edge server other than the device's own, the
    raw data goes device -> home edge server -> backhaul -> that server: the path price says so);
  - pairwise(u, v): for each graph edge, the hidden features the two endpoints exchange per inference (every
    layer, both directions) times the price of the path between their two locations.
Path prices are shortest paths over hop prices (device-edge access, edge-edge backhaul, edge-cloud WAN), so they
form a metric over locations: this is what makes every alpha-expansion move submodular (see `graphcut`).

All figures are modelled (prices x modelled bytes and FLOPs), never measured; units are US$ per inference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
from scipy.spatial import cKDTree

from edgepool.errors import SpecError

GB = 1e9
TIERS = ("device", "edge", "cloud")


CELLULAR_ACCESS_PER_GB = 2.5  # devices on retail mobile data instead of the site's own network (see TierPrices)


@dataclass
class TierPrices:
    """Public list prices (US$), with their sources; `inferences_per_month` prorates monthly storage prices.

    compute, $ per GFLOP:
      cloud  1.18e-6: AWS EC2 c6i.large on-demand us-east-1, $0.085/h for 2 vCPU = $0.0425 per vCPU-hour, at an
             assumed 10 GFLOP/s sustained per vCPU on sparse GNN kernels (memory bound, far below peak).
      edge   1.25 x cloud: edge zones (AWS Local Zones / Wavelength) list the same instances at a premium of about
             20-30% over the parent region; 1.25 is our assumption inside that range.
      device 2.2e-8: energy only: a Raspberry Pi 4 draws about 6.4 W at about 13 GFLOP/s (HPL) = 0.5 J/GFLOP,
             times US average residential electricity, about $0.16/kWh (EIA 2023).
    storage, $ per GB-month: cloud 0.023 (S3 Standard), edge 0.096 (EBS gp3 $0.08 x the 1.2 edge premium),
      device 0.0043 (a $10, 64 GB microSD card written off over 36 months).
    transfer, $ per GB per hop (each direction):
      access   3.6e-6: device <-> edge server over the site's own WiFi / LAN (sensors reach their gateway on a network
               the operator owns, as in Fograph's setting): the device's radio energy only, about 10 nJ/bit, the
               order of published WiFi transfer energies on phones, = 80 J/GB x $0.16/kWh. `CELLULAR_ACCESS_PER_GB`
               (2.5: the order of the worldwide average retail price of mobile data, cable.co.uk worldwide mobile
               data pricing survey 2023, about $2.6/GB) is the other scenario the benchmark reports.
      backhaul 0.01: edge <-> edge, AWS inter-AZ data transfer ($0.01/GB each direction).
      wan      0.045: edge <-> cloud; AWS internet egress $0.09/GB (first 10 TB), ingress free: the mean of the
               two directions, so the path price stays symmetric (a metric).
    """
    compute_per_gflop: tuple[float, float, float] = (2.2e-8, 1.25 * 1.18e-6, 1.18e-6)  # device, edge, cloud
    storage_per_gb_month: tuple[float, float, float] = (0.0043, 0.096, 0.023)
    access_per_gb: float = 80 / 3.6e6 * 0.16
    backhaul_per_gb: float = 0.01
    wan_per_gb: float = 0.045
    inferences_per_month: float = 730 * 60  # one inference a minute

    def validate(self) -> None:
        for name in ("compute_per_gflop", "storage_per_gb_month"):
            value = getattr(self, name)
            if len(value) != 3 or any(not np.isfinite(v) or v < 0 for v in value):
                raise SpecError(f"prices.{name}", value, "three finite prices >= 0 (device, edge, cloud)")
        for name in ("access_per_gb", "backhaul_per_gb", "wan_per_gb"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise SpecError(f"prices.{name}", value, "a finite price > 0 ($ per GB per hop)")
        if not self.inferences_per_month > 0:
            raise SpecError("prices.inferences_per_month", self.inferences_per_month, "a number > 0")


@dataclass
class GNNShape:
    """The GNN run over the graph: GCN-style layers (aggregate neighbours, then a dense transform).

    The default is the GCN the rest of `edgepool.graph` runs (`models` trained by `experiment`): 32 input
    features, one hidden layer of 64, 4 output classes, `GNNShape(in_dim=32, hidden_dims=(64, 4))`.

    Per vertex and inference: FLOPs = sum over layers of (deg+1)*d_in + 2*d_in*d_out; bytes exchanged per graph
    edge = sum over layers of d_in values, both directions; raw input = in_dim values, sensed anew each inference;
    state held = input + every layer's output."""
    in_dim: int = 32
    hidden_dims: tuple[int, ...] = (64, 4)  # output width of each layer; len = number of layers
    bytes_per_value: int = 4  # float32

    def validate(self) -> None:
        if self.in_dim < 1 or not self.hidden_dims or any(int(d) < 1 for d in self.hidden_dims):
            raise SpecError("shape", asdict(self), "in_dim >= 1 and at least one layer width >= 1")

    @property
    def dims(self) -> list[tuple[int, int]]:
        ins = [self.in_dim, *self.hidden_dims[:-1]]
        return list(zip(ins, self.hidden_dims))

    def flops(self, degree: np.ndarray) -> np.ndarray:  # (n,) FLOPs per inference
        degree = np.asarray(degree, dtype=float)
        return sum((degree + 1) * a + 2.0 * a * b for a, b in self.dims)

    @property
    def edge_bytes(self) -> float:  # per graph edge per inference, both directions
        return 2.0 * sum(a for a, _ in self.dims) * self.bytes_per_value

    @property
    def raw_bytes(self) -> float:
        return float(self.in_dim * self.bytes_per_value)

    @property
    def state_bytes(self) -> float:
        return float((self.in_dim + sum(self.hidden_dims)) * self.bytes_per_value)


@dataclass
class TierNetwork:
    """D end devices, E edge servers and one cloud, with positions in the unit square.

    Locations are numbered devices 0..D-1, edge servers D..D+E-1, cloud D+E. Each device hangs off its nearest
    edge server (`device_edge`, an index into edge servers)."""
    device_pos: np.ndarray  # (D, 2)
    edge_pos: np.ndarray  # (E, 2)
    cloud_pos: tuple[float, float] = (0.5, 1.25)
    device_edge: np.ndarray = field(default=None)  # (D,) edge server of each device

    def __post_init__(self):
        self.device_pos = np.asarray(self.device_pos, dtype=float).reshape(-1, 2)
        self.edge_pos = np.asarray(self.edge_pos, dtype=float).reshape(-1, 2)
        if len(self.device_pos) < 1:
            raise SpecError("network.devices", len(self.device_pos), "at least one end device")
        if len(self.edge_pos) < 1:
            raise SpecError("network.edge_servers", len(self.edge_pos), "at least one edge server")
        if self.device_edge is None:
            self.device_edge = cKDTree(self.edge_pos).query(self.device_pos)[1].astype(np.int64)
        self.device_edge = np.asarray(self.device_edge, dtype=np.int64)

    @property
    def n_devices(self) -> int:
        return len(self.device_pos)

    @property
    def n_edge(self) -> int:
        return len(self.edge_pos)

    @property
    def n_locations(self) -> int:
        return self.n_devices + self.n_edge + 1

    @property
    def cloud(self) -> int:
        return self.n_devices + self.n_edge

    @property
    def location_tier(self) -> np.ndarray:  # (L,) 0 device, 1 edge, 2 cloud
        return np.repeat(np.arange(3), [self.n_devices, self.n_edge, 1])

    def location_name(self, loc: int) -> str:
        loc = int(loc)
        if loc < self.n_devices:
            return f"device-{loc}"
        if loc < self.cloud:
            return f"edge-{loc - self.n_devices}"
        return "cloud"

    def location_pos(self) -> np.ndarray:  # (L, 2)
        return np.vstack([self.device_pos, self.edge_pos, np.asarray(self.cloud_pos, dtype=float)[None]])

    def path_prices(self, prices: TierPrices) -> np.ndarray:
        """(L, L) $ per byte between every two locations: shortest paths over the hop prices (a metric)."""
        D, E = self.n_devices, self.n_edge
        a, b, w = prices.access_per_gb / GB, prices.backhaul_per_gb / GB, prices.wan_per_gb / GB
        # between edge servers: direct backhaul, or up to the cloud and down, whichever is cheaper
        ee = np.full((E, E), min(b, 2 * w))
        np.fill_diagonal(ee, 0.0)
        ec = np.full(E, w)  # edge -> cloud
        de = a + ee[self.device_edge]  # (D, E): device -> its edge -> edge
        dd = 2 * a + ee[self.device_edge][:, self.device_edge]  # (D, D)
        np.fill_diagonal(dd, 0.0)
        dc = a + w * np.ones(D)
        dist = np.zeros((D + E + 1, D + E + 1))
        dist[:D, :D] = dd
        dist[:D, D:D + E] = de
        dist[D:D + E, :D] = de.T
        dist[D:D + E, D:D + E] = ee
        dist[:D, -1] = dist[-1, :D] = dc
        dist[D:D + E, -1] = dist[-1, D:D + E] = ec
        return dist


def make_tier_network(n_devices: int = 200, n_edge: int = 9, seed: int = 0) -> TierNetwork:
    """Devices at seeded random positions; edge servers on a near-square grid (a metro deployment); cloud off-map."""
    if int(n_devices) < 1:
        raise SpecError("n_devices", n_devices, "an integer >= 1")
    if int(n_edge) < 1:
        raise SpecError("n_edge", n_edge, "an integer >= 1")
    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(n_edge)))
    rows = int(np.ceil(n_edge / cols))
    grid = [((c + 0.5) / cols, (r + 0.5) / rows) for r in range(rows) for c in range(cols)][:n_edge]
    return TierNetwork(device_pos=rng.random((int(n_devices), 2)), edge_pos=np.array(grid))


@dataclass
class CostBreakdown:
    """US$ per inference (modelled); communication = raw uploads + hidden-feature exchange."""
    compute: float
    storage: float
    communication: float
    total: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayoutProblem:
    """A graph, a tier network and prices reduced to arrays: what the solvers read.

    Vertex i is graph node `nodes[i]`; its K = E + 2 candidates `cand[i]` = (home device, edge server 0, ...,
    edge server E-1, cloud). A layout is a "choice" per vertex (a column of `cand`, 0..K-1); `locations(choice)`
    turns it into a location id per vertex and `choice_of(locations)` back. Every location of the network except
    other devices is a candidate of every vertex, so any baseline that keeps vertices off foreign devices
    (all of ours) lies in the candidate space."""
    nodes: np.ndarray  # (n,) graph node ids (ints)
    pos: np.ndarray  # (n, 2)
    home: np.ndarray  # (n,) home device (= its location id)
    cand: np.ndarray  # (n, K) candidate location ids: home device, every edge server, cloud
    flops: np.ndarray  # (n,) FLOPs per inference
    unary: np.ndarray  # (n, K) $ per inference at each candidate
    edges: np.ndarray  # (m, 2) vertex indices, u < v
    edge_bytes: np.ndarray  # (m,) bytes exchanged per inference
    dist: np.ndarray  # (L, L) $ per byte between locations
    loc_tier: np.ndarray  # (L,)
    indptr: np.ndarray  # CSR adjacency: neighbours of i are nbr[indptr[i]:indptr[i+1]], via edges eid[...]
    nbr: np.ndarray
    eid: np.ndarray
    network: TierNetwork
    prices: TierPrices
    shape: GNNShape
    by_location: list = field(default_factory=list)  # location -> (k,) vertices having it as a candidate
    home_edge: np.ndarray = field(default=None)  # (n,) location id of the home device's edge server
    device_batches: list = field(default_factory=list)  # arrays of vertices; see `build_problem`

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def k(self) -> int:  # candidates per vertex
        return self.cand.shape[1]

    def column_of(self, alpha: int) -> int:
        """The column of `cand` that holds location `alpha` (for the vertices having it as a candidate)."""
        D = self.network.n_devices
        alpha = int(alpha)
        return 0 if alpha < D else alpha - D + 1 if alpha < self.network.cloud else self.k - 1

    def choice_of(self, locations: np.ndarray) -> np.ndarray:
        """(n,) candidate columns of a location-per-vertex layout; SpecError if a vertex sits on a foreign device."""
        loc = np.asarray(locations, dtype=np.int64)
        D = self.network.n_devices
        if loc.shape != (self.n,):
            raise SpecError("locations", f"shape {loc.shape}", f"({self.n},) location ids")
        if np.any((loc < D) & (loc != self.home)):
            raise SpecError("locations", "a vertex on another vertex's device", "home device, edge server or cloud")
        return np.where(loc < D, 0, np.where(loc < self.network.cloud, loc - D + 1, self.k - 1)).astype(np.int64)

    def tiers_of(self, choice: np.ndarray) -> np.ndarray:
        """(n,) tier (0 device, 1 edge, 2 cloud) of each vertex's chosen candidate."""
        return self.loc_tier[self.locations(choice)]

    def unary_at(self, locations: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(compute, storage, raw upload) $ per inference of each vertex at an arbitrary location, (n,) each."""
        locations = np.asarray(locations, dtype=np.int64)
        tier = self.loc_tier[locations]
        compute = self.flops / 1e9 * np.asarray(self.prices.compute_per_gflop)[tier]
        per_byte = np.asarray(self.prices.storage_per_gb_month)[tier] / GB / self.prices.inferences_per_month
        storage = self.shape.state_bytes * per_byte
        upload = self.shape.raw_bytes * self.dist[self.home, locations]
        return compute, storage, upload

    def locations(self, choice: np.ndarray) -> np.ndarray:
        return self.cand[np.arange(self.n), np.asarray(choice, dtype=np.int64)]

    def energy(self, choice: np.ndarray) -> float:
        """Total $ per inference of a layout given as a candidate column per vertex (what the solvers minimize)."""
        choice = np.asarray(choice, dtype=np.int64)
        loc = self.locations(choice)
        unary = self.unary[np.arange(self.n), choice].sum()
        return float(unary + (self.edge_bytes * self.dist[loc[self.edges[:, 0]], loc[self.edges[:, 1]]]).sum())

    def energies(self, choices: np.ndarray) -> np.ndarray:
        """(B,) total $ per inference of B layouts at once, `choices` (B, n) candidate columns."""
        choices = np.asarray(choices, dtype=np.int64).reshape(-1, self.n)
        rows = np.arange(self.n)
        loc = self.cand[rows, choices]  # (B, n)
        unary = self.unary[rows, choices].sum(axis=1)
        u, v = self.edges[:, 0], self.edges[:, 1]
        return unary + (self.edge_bytes * self.dist[loc[:, u], loc[:, v]]).sum(axis=1)


def build_problem(graph: nx.Graph, network: TierNetwork, prices: TierPrices | None = None,
                  shape: GNNShape | None = None) -> LayoutProblem:
    """Arrays for `graph` (integer nodes with a "pos" (x, y) attribute) on `network` at `prices`."""
    prices, shape = prices or TierPrices(), shape or GNNShape()
    prices.validate()
    shape.validate()
    if graph.number_of_nodes() == 0:
        raise SpecError("graph", "empty graph", "a networkx.Graph with at least one vertex")
    nodes = np.array(sorted(graph.nodes))
    if not np.issubdtype(nodes.dtype, np.integer) or nodes.min() < 0:
        raise SpecError("graph.nodes", nodes[:3].tolist(), "non-negative integer node ids")
    try:
        pos = np.array([graph.nodes[v]["pos"] for v in nodes.tolist()], dtype=float).reshape(len(nodes), 2)
    except KeyError as e:
        raise SpecError("graph.nodes[*]['pos']", "missing", "an (x, y) position on every vertex") from e
    lookup = np.full(int(nodes.max()) + 1, -1, dtype=np.int64)
    lookup[nodes] = np.arange(len(nodes))
    e = np.array(list(graph.edges), dtype=np.int64).reshape(-1, 2)
    e = lookup[e]
    e = e[e[:, 0] != e[:, 1]]  # self-loops exchange nothing
    edges = np.sort(e, axis=1)
    n, m = len(nodes), len(edges)
    D, E = network.n_devices, network.n_edge
    home = cKDTree(network.device_pos).query(pos)[1].astype(np.int64)
    cand = np.empty((n, E + 2), dtype=np.int64)
    cand[:, 0] = home
    cand[:, 1:E + 1] = D + np.arange(E)
    cand[:, E + 1] = network.cloud
    degree = np.bincount(edges.ravel(), minlength=n)
    # CSR adjacency, both directions
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    ids = np.concatenate([np.arange(m), np.arange(m)])
    order = np.argsort(src, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(src, minlength=n))
    loc_tier = network.location_tier
    p = LayoutProblem(nodes=nodes, pos=pos, home=home, cand=cand, flops=shape.flops(degree),
                      unary=np.zeros((n, E + 2)), edges=edges, edge_bytes=np.full(m, shape.edge_bytes),
                      dist=network.path_prices(prices), loc_tier=loc_tier, indptr=indptr, nbr=dst[order],
                      eid=ids[order], network=network, prices=prices, shape=shape,
                      home_edge=D + network.device_edge[home])
    p.unary = np.stack([sum(p.unary_at(cand[:, t])) for t in range(E + 2)], axis=1)
    # vertices that may take each location: a device's own vertices; every vertex for edge servers and the cloud
    everyone = np.arange(n)
    by_loc = [everyone] * network.n_locations
    order = np.argsort(home, kind="stable")
    split = np.searchsorted(home[order], np.arange(D + 1))
    for d in range(D):
        by_loc[d] = order[split[d]:split[d + 1]]
    p.by_location = by_loc
    p.device_batches = _device_batches(home, edges, D, by_loc)
    return p


def _device_batches(home: np.ndarray, edges: np.ndarray, n_devices: int, by_loc: list) -> list:
    """Devices coloured so that no graph edge joins the vertices of two devices of one colour (greedy colouring of
    the device conflict graph); one array of vertices per colour. The expansion moves toward the devices of one
    colour share no pairwise term, so one min cut over their union solves all of them exactly (see `graphcut`)."""
    hu, hv = home[edges[:, 0]], home[edges[:, 1]]
    cross = hu != hv
    conflict = nx.Graph()
    used = np.unique(home)
    conflict.add_nodes_from(used.tolist())
    conflict.add_edges_from(zip(hu[cross].tolist(), hv[cross].tolist()))
    colour = nx.greedy_color(conflict, strategy="largest_first")
    groups: dict[int, list] = {}
    for d, c in colour.items():
        groups.setdefault(c, []).append(by_loc[d])
    return [np.sort(np.concatenate(g)) for _, g in sorted(groups.items())]


def layout_cost(problem: LayoutProblem, locations: np.ndarray) -> CostBreakdown:
    """Compute, storage and communication of a layout given as a location id per vertex (any location)."""
    loc = np.asarray(locations, dtype=np.int64)
    if loc.shape != (problem.n,) or loc.min(initial=0) < 0 or loc.max(initial=0) >= problem.network.n_locations:
        raise SpecError("locations", f"shape {loc.shape}", f"({problem.n},) location ids in "
                        f"0..{problem.network.n_locations - 1}")
    compute, storage, upload = problem.unary_at(loc)
    exchange = problem.edge_bytes * problem.dist[loc[problem.edges[:, 0]], loc[problem.edges[:, 1]]]
    c, s, comm = float(compute.sum()), float(storage.sum()), float(upload.sum() + exchange.sum())
    return CostBreakdown(compute=c, storage=s, communication=comm, total=c + s + comm)


def approximation_factor(problem: LayoutProblem) -> float:
    """2c, c = largest / smallest nonzero path price: alpha-expansion's bound for a metric pairwise term
    (Boykov, Veksler, Zabih 2001, Theorem 6.1), the "parameterized constant factor"."""
    d = problem.dist[problem.dist > 0]
    return float(2 * d.max() / d.min()) if d.size else 1.0
