"""Real 2D laser scans and their fusion: the work a RecSLAM edge server does per scan, run here for real.

A seeded occupancy-grid world (walls, rooms with doors, boxes), robots walking through it with drifting odometry,
scans by ray casting, and a server's fusion per scan: point-to-point ICP (brute-force nearest neighbours, SVD
alignment) of the scan against the server's submap, then a log-odds grid update. The cloud merges the servers'
grids by adding log-odds. FLOPs are counted from the work actually done (ICP iterations, points, submap points,
ray samples) and seconds are measured on this host, so the scheduling scenario's cost model rests on a real run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from edgepool.errors import SpecError


@dataclass(frozen=True)
class Lidar:
    """A 2D laser scanner; a scan goes out as a ROS `sensor_msgs/LaserScan` (float32 ranges + intensities)."""

    name: str
    beams: int
    fov_rad: float
    hz: float
    max_range_m: float
    source: str

    @property
    def scan_bytes(self) -> int:
        return 8 * self.beams + 64  # ranges + intensities (float32 each) + header and angles


LIDARS: dict[str, Lidar] = {
    "hokuyo-ust-10lx": Lidar("hokuyo-ust-10lx", 1081, np.deg2rad(270.0), 40.0, 10.0,
                             "Hokuyo UST-10LX datasheet: 270 deg, 0.25 deg steps (1081), 25 ms scan, 10 m range"),
    "sick-tim571": Lidar("sick-tim571", 811, np.deg2rad(270.0), 15.0, 25.0,
                         "SICK TiM571 datasheet: 270 deg, 0.33 deg resolution (811 points), 15 Hz, 25 m range"),
}

FLOPS_PER_PAIR = 5  # one ICP nearest-neighbour candidate: dx, dy, dx*dx, dy*dy, the sum
FLOPS_PER_RAY_SAMPLE = 6  # one grid-update sample along a beam: x and y (mul-add each), floor, index, add
LOG_ODDS_HIT, LOG_ODDS_MISS, LOG_ODDS_MAX = 0.85, -0.4, 5.0


@dataclass
class World:
    """Ground truth: `occupied[row, col]` (row = y, col = x), `resolution` metres per cell, origin at (0, 0)."""

    occupied: np.ndarray  # (H, W) bool
    resolution: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.occupied.shape

    def clearance(self) -> np.ndarray:
        """Metres from each cell to the nearest occupied cell: (H, W)."""
        return ndimage.distance_transform_edt(~self.occupied) * self.resolution


def make_world(rng: np.random.Generator, width_m: float = 12.0, height_m: float = 9.0,
               resolution: float = 0.05) -> World:
    """Outer walls, two interior walls with door gaps, and a few boxes: enough structure for ICP to lock onto."""
    if width_m < 4 or height_m < 4 or not 0.01 <= resolution <= 0.5:
        raise SpecError("world", (width_m, height_m, resolution), "width and height >= 4 m, resolution 0.01-0.5 m")
    h, w = int(round(height_m / resolution)), int(round(width_m / resolution))
    occ = np.zeros((h, w), bool)
    t = max(1, int(round(0.1 / resolution)))  # 10 cm walls
    occ[:t, :], occ[-t:, :], occ[:, :t], occ[:, -t:] = True, True, True, True
    door = int(round(1.0 / resolution))
    x = int(rng.uniform(0.35, 0.65) * w)  # a vertical wall with a door
    occ[:, x:x + t] = True
    y0 = int(rng.uniform(0.2, 0.7) * h)
    occ[y0:y0 + door, x:x + t] = False
    y = int(rng.uniform(0.35, 0.65) * h)  # a horizontal wall on one side, with a door
    side = slice(t, x) if rng.random() < 0.5 else slice(x + t, w - t)
    occ[y:y + t, side] = True
    gap = int(rng.uniform(side.start + door, side.stop - 2 * door))
    occ[y:y + t, gap:gap + door] = False
    for _ in range(rng.integers(4, 8)):  # boxes 0.3-0.8 m
        bh, bw = (rng.uniform(0.3, 0.8, 2) / resolution).astype(int)
        r, c = rng.integers(t + 10, h - bh - t - 10), rng.integers(t + 10, w - bw - t - 10)
        occ[r:r + bh, c:c + bw] = True
    return World(occupied=occ, resolution=resolution)


def raycast(world: World, pose: np.ndarray, lidar: Lidar, rng: np.random.Generator | None = None,
            noise_m: float = 0.01) -> np.ndarray:
    """Ranges (beams,) from `pose` = (x, y, theta); `inf` where nothing is hit within range."""
    angles = pose[2] + np.linspace(-lidar.fov_rad / 2, lidar.fov_rad / 2, lidar.beams)
    steps = np.arange(1, int(lidar.max_range_m / (world.resolution / 2)) + 1) * (world.resolution / 2)
    xs = pose[0] + np.cos(angles)[:, None] * steps  # (beams, samples)
    ys = pose[1] + np.sin(angles)[:, None] * steps
    h, w = world.shape
    cols, rows = (xs / world.resolution).astype(int), (ys / world.resolution).astype(int)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    hit = np.ones_like(inside)
    hit[inside] = world.occupied[rows[inside], cols[inside]]
    first = hit.argmax(axis=1)
    ranges = np.where(hit.any(axis=1), steps[first], np.inf)
    if rng is not None and noise_m > 0:
        ranges = ranges + rng.normal(0.0, noise_m, ranges.shape)
    return ranges


def robot_path(world: World, rng: np.random.Generator, steps: int, step_m: float = 0.1,
               clearance_m: float = 0.45) -> np.ndarray:
    """Ground-truth poses (steps, 3) of a robot wandering through free space, keeping `clearance_m` from walls."""
    clear = world.clearance()
    free = np.argwhere(clear > clearance_m + 0.2)
    r, c = free[rng.integers(len(free))]
    pose = np.array([(c + 0.5) * world.resolution, (r + 0.5) * world.resolution, rng.uniform(-np.pi, np.pi)])
    poses = [pose.copy()]
    for _ in range(steps - 1):
        for _attempt in range(24):
            heading = pose[2] + rng.normal(0.0, 0.12)
            nxt = pose[:2] + step_m * np.array([np.cos(heading), np.sin(heading)])
            rr, cc = int(nxt[1] / world.resolution), int(nxt[0] / world.resolution)
            if 0 <= rr < clear.shape[0] and 0 <= cc < clear.shape[1] and clear[rr, cc] > clearance_m:
                pose = np.array([nxt[0], nxt[1], heading])
                break
            pose = np.array([pose[0], pose[1], pose[2] + rng.uniform(0.5, np.pi)])  # turn away and retry
        poses.append(pose.copy())
    return np.array(poses)


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pose a ⊕ b: b expressed in a's frame, returned in the world frame."""
    c, s = np.cos(a[2]), np.sin(a[2])
    return np.array([a[0] + c * b[0] - s * b[1], a[1] + s * b[0] + c * b[1], a[2] + b[2]])


def between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The relative pose a⁻¹ ⊕ b (what odometry reports between two poses)."""
    c, s = np.cos(a[2]), np.sin(a[2])
    d = b[:2] - a[:2]
    return np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1], b[2] - a[2]])


def odometry(truth: np.ndarray, rng: np.random.Generator, trans_noise: float = 0.03,
             rot_noise: float = 0.03) -> np.ndarray:
    """Drifting wheel odometry (steps, 3): each step's motion with relative noise; the start pose is known."""
    odom = [truth[0].copy()]
    for k in range(1, len(truth)):
        rel = between(truth[k - 1], truth[k])
        rel = rel + np.array([abs(rel[0]) * rng.normal(0, trans_noise), abs(rel[0]) * rng.normal(0, trans_noise),
                              rng.normal(0, rot_noise)])
        odom.append(compose(odom[-1], rel))
    return np.array(odom)


def scan_points(ranges: np.ndarray, lidar: Lidar) -> np.ndarray:
    """The scan's hits in the robot frame: (N, 2), beams without a hit dropped."""
    angles = np.linspace(-lidar.fov_rad / 2, lidar.fov_rad / 2, lidar.beams)
    ok = np.isfinite(ranges)
    return np.stack([ranges[ok] * np.cos(angles[ok]), ranges[ok] * np.sin(angles[ok])], axis=1)


def transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    c, s = np.cos(pose[2]), np.sin(pose[2])
    return points @ np.array([[c, s], [-s, c]]) + pose[:2]


@dataclass
class IcpResult:
    pose: np.ndarray
    iterations: int
    flops: float
    bytes_moved: float
    pairs: int  # scan points x submap points


def icp(scan: np.ndarray, submap: np.ndarray, init: np.ndarray, max_iter: int = 30, reject_m: float = 0.2,
        tol: float = 1e-3) -> IcpResult:
    """Point-to-point ICP of `scan` (N, 2, robot frame) onto `submap` (M, 2, world frame) from pose `init`.

    Brute-force nearest neighbours (what a GPU kernel does; the FLOPs are the N x M distance terms per iteration),
    pairs farther than `reject_m` dropped, the rigid motion from the SVD of the cross-covariance (Kabsch)."""
    pose, flops, moved, it = init.astype(float).copy(), 0.0, 0.0, 0
    n, m = len(scan), len(submap)
    if n < 10 or m < 10:
        return IcpResult(pose, 0, 0.0, 0.0, n * m)
    sq_map = (submap ** 2).sum(1)  # (M,)
    for it in range(1, max_iter + 1):
        world = transform(scan, pose)  # (N, 2)
        d2 = (world ** 2).sum(1)[:, None] + sq_map[None, :] - 2.0 * world @ submap.T  # (N, M)
        nearest = d2.argmin(axis=1)
        dist2 = d2[np.arange(n), nearest]
        flops += FLOPS_PER_PAIR * n * m
        moved += 8.0 * (n + m)
        keep = dist2 < reject_m ** 2
        if keep.sum() < 10:
            break
        src, dst = world[keep], submap[nearest[keep]]
        mu_s, mu_d = src.mean(0), dst.mean(0)
        u, _, vt = np.linalg.svd((src - mu_s).T @ (dst - mu_d))
        rot = (u @ vt).T
        if np.linalg.det(rot) < 0:
            vt[1] *= -1
            rot = (u @ vt).T
        dth = np.arctan2(rot[1, 0], rot[0, 0])
        shift = mu_d - rot @ mu_s
        c, s = np.cos(dth), np.sin(dth)  # apply the correction on top of the current pose (world frame)
        pose = np.array([c * pose[0] - s * pose[1] + shift[0], s * pose[0] + c * pose[1] + shift[1], pose[2] + dth])
        flops += 20.0 * keep.sum()
        if np.hypot(*shift) < tol and abs(dth) < tol:
            break
    return IcpResult(pose, it, flops, moved, n * m)


class GridMap:
    """A log-odds occupancy grid in the world frame: what an edge server builds and the cloud merges."""

    def __init__(self, shape: tuple[int, int], resolution: float):
        self.logodds = np.zeros(shape, np.float32)  # (H, W)
        self.resolution = resolution

    def integrate(self, pose: np.ndarray, ranges: np.ndarray, lidar: Lidar) -> tuple[float, np.ndarray]:
        """Mark the cells along each beam free and its end occupied; return (FLOPs, flat indices touched)."""
        h, w = self.logodds.shape
        angles = pose[2] + np.linspace(-lidar.fov_rad / 2, lidar.fov_rad / 2, lidar.beams)
        hit = np.isfinite(ranges)
        reach = np.where(hit, ranges, lidar.max_range_m)
        steps = np.arange(0, lidar.max_range_m, self.resolution)  # (S,)
        along = steps[None, :] < (reach[:, None] - self.resolution)  # (beams, S) free samples
        xs = pose[0] + np.cos(angles)[:, None] * steps
        ys = pose[1] + np.sin(angles)[:, None] * steps
        cols, rows = (xs / self.resolution).astype(int), (ys / self.resolution).astype(int)
        ok = along & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        free = np.unique(rows[ok] * w + cols[ok])
        ex, ey = pose[0] + np.cos(angles[hit]) * ranges[hit], pose[1] + np.sin(angles[hit]) * ranges[hit]
        ec, er = (ex / self.resolution).astype(int), (ey / self.resolution).astype(int)
        inside = (ec >= 0) & (ec < w) & (er >= 0) & (er < h)
        occ = np.unique(er[inside] * w + ec[inside])
        flat = self.logodds.reshape(-1)
        free = np.setdiff1d(free, occ, assume_unique=True)
        flat[free] += LOG_ODDS_MISS
        flat[occ] += LOG_ODDS_HIT
        np.clip(flat, -LOG_ODDS_MAX, LOG_ODDS_MAX, out=flat)
        return float(FLOPS_PER_RAY_SAMPLE * ok.sum() + 4 * lidar.beams), np.concatenate([free, occ])

    def occupied_points(self, center: np.ndarray, radius: float, threshold: float = 0.5) -> np.ndarray:
        """Centres of the occupied cells within `radius` of `center`: (M, 2), the submap ICP matches against."""
        rows, cols = np.nonzero(self.logodds > threshold)
        pts = np.stack([(cols + 0.5) * self.resolution, (rows + 0.5) * self.resolution], axis=1)
        return pts[np.hypot(*(pts - center[:2]).T) <= radius]


@dataclass
class ScanWork:
    """What fusing one scan cost: counted FLOPs and bytes, seconds measured on this host, ICP iterations."""

    flops: float
    bytes_moved: float
    seconds: float
    iterations: int
    scan_points: int
    submap_points: int


@dataclass
class EdgeFusion:
    """One edge server's fusion: every robot's scans matched (ICP) and integrated into the server's submap."""

    shape: tuple[int, int]
    resolution: float
    use_icp: bool = True
    grid: GridMap = field(init=False)
    last: dict = field(default_factory=dict)  # robot -> (odometry pose, corrected pose)
    work: list[ScanWork] = field(default_factory=list)
    touched: dict = field(default_factory=dict)  # robot -> set of flat cell indices updated

    def __post_init__(self):
        self.grid = GridMap(self.shape, self.resolution)

    def fuse(self, robot: int, odom: np.ndarray, ranges: np.ndarray, lidar: Lidar) -> np.ndarray:
        """Fuse one scan; return the corrected pose (the odometry's start pose is taken as known)."""
        start = time.perf_counter()
        if robot in self.last:
            prev_odom, prev_pose = self.last[robot]
            guess = compose(prev_pose, between(prev_odom, odom))
        else:
            guess = odom.copy()
        pts = scan_points(ranges, lidar)
        result = IcpResult(guess, 0, 0.0, 0.0, 0)
        submap = np.zeros((0, 2))
        if self.use_icp and robot in self.last:
            submap = self.grid.occupied_points(guess, lidar.max_range_m)
            result = icp(pts, submap, guess)
        pose = result.pose
        grid_flops, cells = self.grid.integrate(pose, ranges, lidar)
        self.touched.setdefault(robot, set()).update(cells.tolist())
        self.last[robot] = (odom, pose)
        self.work.append(ScanWork(flops=result.flops + grid_flops, bytes_moved=result.bytes_moved + 8.0 * len(cells),
                                  seconds=time.perf_counter() - start, iterations=result.iterations,
                                  scan_points=len(pts), submap_points=len(submap)))
        return pose


def merge(grids: list[GridMap]) -> tuple[GridMap, float]:
    """The cloud's global merge: log-odds add the servers' grids (one frame, since start poses are known);
    returns the merged grid and its FLOPs (one add and one clip per cell per submap)."""
    merged = GridMap(grids[0].logodds.shape, grids[0].resolution)
    for g in grids:
        merged.logodds += g.logodds
    np.clip(merged.logodds, -LOG_ODDS_MAX, LOG_ODDS_MAX, out=merged.logodds)
    return merged, 2.0 * merged.logodds.size * len(grids)


def map_accuracy(grid: GridMap, world: World, threshold: float = 0.5) -> dict:
    """How well the fused map matches the world, over the cells it observed: an occupied cell is right when a
    true wall is within one cell (a grid's half-cell quantisation), a free cell when it is truly free."""
    occ, free = grid.logodds > threshold, grid.logodds < -threshold
    near_wall = ndimage.binary_dilation(world.occupied, iterations=1)
    right = (occ & near_wall).sum() + (free & ~world.occupied).sum()
    observed = occ.sum() + free.sum()
    return {"accuracy": float(right / max(observed, 1)), "occupied_precision": float((occ & near_wall).sum()
            / max(occ.sum(), 1)), "observed_cells": int(observed)}


@dataclass
class FusionRun:
    """A real hierarchical fusion run: the merged map's accuracy with and without ICP, pose errors, and the
    per-scan work (the numbers the scheduling cost model is calibrated from)."""

    accuracy: dict
    accuracy_odometry_only: dict
    pose_error_m: float
    odometry_error_m: float
    work: list[ScanWork]
    cells_per_scan: float  # distinct submap cells one robot's scan adds, averaged over its scans
    merge_flops: float
    merged: GridMap
    world: World
    paths: list[np.ndarray]

    def summary(self, lidar: Lidar) -> dict:
        w = [x for x in self.work if x.iterations > 0]
        return {"map_accuracy": self.accuracy["accuracy"], "occupied_precision": self.accuracy["occupied_precision"],
                "map_accuracy_odometry_only": self.accuracy_odometry_only["accuracy"],
                "pose_error_m": self.pose_error_m, "odometry_error_m": self.odometry_error_m,
                "scans": len(self.work), "lidar": lidar.name,
                "icp_iterations_mean": float(np.mean([x.iterations for x in w])) if w else 0.0,
                "submap_points_mean": float(np.mean([x.submap_points for x in w])) if w else 0.0,
                "scan_points_mean": float(np.mean([x.scan_points for x in self.work])),
                "flops_per_scan": float(np.mean([x.flops for x in self.work])),
                "host_seconds_per_scan": float(np.mean([x.seconds for x in self.work])),
                "host_flops_per_s": float(sum(x.flops for x in self.work) / max(sum(x.seconds for x in self.work),
                                                                                  1e-9)),
                "cells_per_scan": self.cells_per_scan, "merge_flops": self.merge_flops}


def run_fusion(seed: int, robots: int = 3, servers: int = 2, scans: int = 40,
               lidar: Lidar = LIDARS["sick-tim571"], resolution: float = 0.05) -> FusionRun:
    """Robots walk a seeded world; robot i's scans go to server i % servers, which fuses them (ICP + grid);
    the cloud merges the servers' grids. The same scans fused on odometry alone give the baseline map."""
    if robots < 1 or servers < 1 or scans < 2:
        raise SpecError("fusion", (robots, servers, scans), "robots >= 1, servers >= 1, scans >= 2")
    rng = np.random.default_rng(seed)
    world = make_world(rng, resolution=resolution)
    paths = [robot_path(world, rng, scans) for _ in range(robots)]
    odoms = [odometry(p, rng) for p in paths]
    ranges = [[raycast(world, pose, lidar, rng) for pose in p] for p in paths]
    edges = [EdgeFusion(world.shape, resolution) for _ in range(servers)]
    plain = [EdgeFusion(world.shape, resolution, use_icp=False) for _ in range(servers)]
    err, odo_err = [], []
    for k in range(scans):  # scans interleave across robots, as they arrive in a round
        for i in range(robots):
            pose = edges[i % servers].fuse(i, odoms[i][k], ranges[i][k], lidar)
            plain[i % servers].fuse(i, odoms[i][k], ranges[i][k], lidar)
            err.append(np.hypot(*(pose[:2] - paths[i][k][:2])))
            odo_err.append(np.hypot(*(odoms[i][k][:2] - paths[i][k][:2])))
    merged, merge_flops = merge([e.grid for e in edges])
    merged_plain, _ = merge([e.grid for e in plain])
    work = [w for e in edges for w in e.work]
    cells = np.mean([len(c) / scans for e in edges for c in e.touched.values()])
    return FusionRun(accuracy=map_accuracy(merged, world), accuracy_odometry_only=map_accuracy(merged_plain, world),
                     pose_error_m=float(np.mean(err)), odometry_error_m=float(np.mean(odo_err)), work=work,
                     cells_per_scan=float(cells), merge_flops=merge_flops, merged=merged, world=world, paths=paths)
