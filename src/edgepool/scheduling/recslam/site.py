"""A RecSLAM site: edge servers and a cloud from a cluster YAML, robots drawn from a seed, and the round's costs.

Robots stand on the floor (most around one seeded hotspot, the rest anywhere), each with a lidar from `scans.LIDARS`.
A robot's round (`round_s` of scans) costs, on server s:
- upload: scans x LaserScan bytes / (802.11ac PHY rate at the robot-server distance x MAC efficiency);
- fusion: scans x roofline time of the FLOPs and bytes one scan's ICP + grid update took in the real fusion run
  (`Calibration`, counted while running it here) at the server's speed from `Fleet` (the cost model's rule);
- submap: the grid cells its scans touched (1 byte of log-odds each) over the server-cloud link, merged on the
  cloud at 2 FLOPs per cell.
All of these are simulated times; the per-scan work they scale is measured on this host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgepool.cluster import load_cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.scheduling.fleet import Fleet
from edgepool.scheduling.recslam.assignment import AssignmentProblem
from edgepool.scheduling.recslam.scans import LIDARS, FusionRun, run_fusion

# 802.11ac, 80 MHz, one spatial stream, 800 ns guard interval: PHY rate (Mbit/s) and the standard's minimum
# receiver sensitivity (dBm) for MCS 0-9 (IEEE 802.11ac-2013, VHT MCS tables and Table 22-25).
VHT80_RATE_MBPS = np.array([29.3, 58.5, 87.8, 117.0, 175.5, 234.0, 263.3, 292.5, 351.0, 390.0])
VHT80_SENSITIVITY_DBM = np.array([-76, -73, -71, -68, -64, -60, -59, -58, -53, -51])


@dataclass(frozen=True)
class WifiModel:
    """Robot-to-AP rate by distance: received power from a log-distance path loss, then the fastest MCS whose
    sensitivity it meets. Path loss: free space to 1 m at 5.18 GHz (46.7 dB), then 10 n log10(d) with n = 3.1
    (ITU-R P.1238 distance power loss coefficient N = 31 for offices at 5.2 GHz)."""

    tx_power_dbm: float = 18.0  # assumption: a robot's Wi-Fi client radio
    antenna_gain_db: float = 4.0  # assumption: 2 dBi at each end
    loss_1m_db: float = 46.7
    exponent: float = 3.1
    mac_efficiency: float = 0.6  # assumption: TCP goodput is about 60% of the PHY rate on 802.11ac

    def rx_dbm(self, distance_m: np.ndarray) -> np.ndarray:
        d = np.maximum(np.asarray(distance_m, float), 1.0)
        return self.tx_power_dbm + self.antenna_gain_db - self.loss_1m_db - 10 * self.exponent * np.log10(d)

    def goodput_bps(self, distance_m: np.ndarray) -> np.ndarray:
        """Bytes/s a robot moves to an AP at `distance_m` (0 when out of range)."""
        rx = self.rx_dbm(distance_m)[..., None]
        ok = rx >= VHT80_SENSITIVITY_DBM
        mcs = np.where(ok.any(-1), ok.sum(-1) - 1, -1)  # sensitivities fall with MCS, so the count is the index+1
        rate = np.where(mcs >= 0, VHT80_RATE_MBPS[np.maximum(mcs, 0)], 0.0)
        return rate * 1e6 / 8 * self.mac_efficiency


@dataclass(frozen=True)
class SiteConfig:
    """What a seed draws and the stated assumptions of a round."""

    robots: tuple[int, int] = (12, 30)  # inclusive range of robots per site
    hotspot_fraction: tuple[float, float] = (0.5, 0.75)  # share of robots around the hotspot
    hotspot_sigma_m: float = 5.0
    margin_m: float = 10.0  # floor = the servers' bounding box grown by this, clipped at 0
    round_s: float = 1.0  # the scans one round fuses: round_s x the lidar's rate
    lidar_mix: tuple[tuple[str, float], ...] = (("hokuyo-ust-10lx", 0.5), ("sick-tim571", 0.5))
    robot_memory_bytes: float = 512 * 2 ** 20  # assumption: one robot's trajectory builder, submaps, scan history
    server_memory_fraction: float = 0.25  # assumption: the share of a server's memory given to fusion
    cloud: str = "cloud"
    wifi: WifiModel = field(default_factory=WifiModel)

    def __post_init__(self):
        lo, hi = self.robots
        if not 1 <= lo <= hi <= 200:
            raise SpecError("robots", self.robots, "(low, high) with 1 <= low <= high <= 200")
        if not 0 <= self.hotspot_fraction[0] <= self.hotspot_fraction[1] <= 1:
            raise SpecError("hotspot_fraction", self.hotspot_fraction, "(low, high) within [0, 1]")
        if self.round_s <= 0:
            raise SpecError("round_s", self.round_s, "seconds > 0")
        unknown = [n for n, _ in self.lidar_mix if n not in LIDARS]
        if unknown:
            raise SpecError("lidar_mix", unknown, ", ".join(LIDARS))


@dataclass(frozen=True)
class LidarWork:
    """Per-scan fusion work of one lidar, from the real fusion run (`scans.run_fusion`) on this host."""

    flops: float  # counted: ICP pairs x 5 + alignment + ray samples x 6, mean over scans that ran ICP
    bytes_moved: float
    cells: float  # distinct grid cells one scan adds to the submap
    host_seconds: float  # measured here, per scan
    summary: dict  # the run's map accuracy, pose errors and counts
    run: FusionRun = field(repr=False, compare=False, default=None)  # the run itself (maps, paths) for plots


@dataclass(frozen=True)
class Calibration:
    lidars: dict[str, LidarWork]
    seed: int


@lru_cache(maxsize=8)
def calibrate(seed: int = 0, scans: int = 30, robots: int = 2, lidars: tuple[str, ...] = tuple(LIDARS)) -> Calibration:
    """Run the real fusion (ICP + grid update + cloud merge) once per lidar; cached per process."""
    out = {}
    for i, name in enumerate(lidars):
        run = run_fusion(seed + i, robots=robots, servers=2, scans=scans, lidar=LIDARS[name])
        icp = [w for w in run.work if w.iterations > 0] or run.work
        out[name] = LidarWork(flops=float(np.mean([w.flops for w in icp])),
                              bytes_moved=float(np.mean([w.bytes_moved for w in icp])), cells=run.cells_per_scan,
                              host_seconds=float(np.mean([w.seconds for w in icp])),
                              summary=run.summary(LIDARS[name]), run=run)
    return Calibration(lidars=out, seed=seed)


@dataclass
class RobotSite:
    """Servers (fleet indices), the cloud, robots (positions, lidars) and the round's `AssignmentProblem`."""

    fleet: Fleet
    servers: list[int]
    cloud: int
    server_xy: np.ndarray  # (S, 2)
    robot_xy: np.ndarray  # (R, 2)
    robot_lidar: list[str]
    floor: tuple[float, float, float, float]  # x0, y0, x1, y1
    problem: AssignmentProblem

    @property
    def server_names(self) -> list[str]:
        return [self.fleet.names[i] for i in self.servers]


@lru_cache(maxsize=4)
def _fleet(cluster_path: str) -> Fleet:
    return Fleet.from_cluster(load_cluster(cluster_path), CostModel())


def build_site(cluster_path: str | Path, seed: int, calibration: Calibration,
               config: SiteConfig = SiteConfig()) -> RobotSite:
    """Draw the robots from `seed` and cost every robot-server pair for one round."""
    fleet = _fleet(str(cluster_path))
    if config.cloud not in fleet.names:
        raise SpecError("cloud", config.cloud, f"a device of {cluster_path}: {', '.join(fleet.names)}")
    cloud = fleet.index(config.cloud)
    servers = [i for i in range(len(fleet)) if i != cloud]
    missing = [fleet.names[i] for i in servers if fleet.names[i] not in fleet.locations]
    if missing or not servers:
        raise SpecError("location", missing or "no servers", "every edge server with a location [x, y] in metres")
    sxy = np.array([fleet.locations[fleet.names[i]] for i in servers], float)
    x0, y0 = np.maximum(sxy.min(0) - config.margin_m, 0.0)
    x1, y1 = sxy.max(0) + config.margin_m
    rng = np.random.default_rng(seed)
    n = int(rng.integers(config.robots[0], config.robots[1] + 1))
    hot = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    n_hot = int(round(n * rng.uniform(*config.hotspot_fraction)))
    rxy = np.empty((n, 2))
    for r in range(n):
        for _ in range(1000):  # redraw a robot that no AP would hear
            p = hot + rng.normal(0, config.hotspot_sigma_m, 2) if r < n_hot else rng.uniform([x0, y0], [x1, y1])
            p = np.clip(p, [x0, y0], [x1, y1])
            if config.wifi.goodput_bps(np.hypot(*(sxy - p).T)).max() > 0:
                break
        else:
            raise SpecError("site", str(cluster_path), "servers placed so every point of the floor hears one AP")
        rxy[r] = p
    names, weights = zip(*config.lidar_mix)
    lidars = [names[i] for i in rng.choice(len(names), size=n, p=np.array(weights) / sum(weights))]
    problem = _problem(fleet, servers, cloud, sxy, rxy, lidars, calibration, config)
    return RobotSite(fleet=fleet, servers=servers, cloud=cloud, server_xy=sxy, robot_xy=rxy, robot_lidar=lidars,
                     floor=(float(x0), float(y0), float(x1), float(y1)), problem=problem)


def _problem(fleet: Fleet, servers: list[int], cloud: int, sxy: np.ndarray, rxy: np.ndarray, lidars: list[str],
             calibration: Calibration, config: SiteConfig) -> AssignmentProblem:
    dist = np.hypot(*(rxy[:, None, :] - sxy[None, :, :]).transpose(2, 0, 1))  # (R, S)
    rate = config.wifi.goodput_bps(dist)
    n_r, n_s = dist.shape
    upload, fuse, submap, merge = (np.zeros((n_r, n_s)), np.zeros((n_r, n_s)), np.zeros((n_r, n_s)),
                                   np.zeros(n_r))
    for r, name in enumerate(lidars):
        lidar, work = LIDARS[name], calibration.lidars.get(name)
        if work is None:
            raise SpecError("lidar", name, f"a calibrated lidar: {', '.join(calibration.lidars)}")
        scans = lidar.hz * config.round_s
        cells = work.cells * scans
        with np.errstate(divide="ignore"):
            upload[r] = np.where(rate[r] > 0, scans * lidar.scan_bytes / rate[r], np.inf)
        for j, s in enumerate(servers):
            fuse[r, j] = scans * fleet.compute_s(s, work.flops, work.bytes_moved)
            submap[r, j] = cells / fleet.bandwidth[s, cloud]
        merge[r] = fleet.compute_s(cloud, 2.0 * cells, 2.0 * cells)
    capacity = np.array([fleet.nodes[s].device.memory_bytes * config.server_memory_fraction for s in servers])
    return AssignmentProblem(upload_s=upload, fuse_s=fuse, submap_s=submap, merge_s=merge,
                             link_latency_s=np.array([fleet.latency[s, cloud] for s in servers]),
                             memory_bytes=np.full(n_r, config.robot_memory_bytes), capacity_bytes=capacity,
                             distance_m=dist)
