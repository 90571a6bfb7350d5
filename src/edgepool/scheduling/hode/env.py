"""`HodeEnv`: one camera frame per step; the action is how the frame's moving area is shared across the nodes.

Everything here is simulated. Per frame: the motion filter's blocks (precomputed from a generated video) are cut
into k regions with the action's shares (`regions.split_regions`, object-aligned cuts and overlap); region i
travels over the camera-to-node link (`Fleet.transfer_s` at this frame's bandwidth), waits in the node's FIFO
queue behind other work (`NodeQueues`, seeded on/off background load) and runs the CNN's FLOPs at the node's
speed (`Fleet.compute_s`). Frame latency = the slowest region's finish - the frame's time.

Bandwidth varies per frame (a log-AR(1) factor per link, wireless links more) and the scheduler sees last
frame's. Observation (3k + 2,): per node [backlog / T, last bandwidth / nominal, seconds per block at last
bandwidth / T], then [moving share of the frame, previous frame latency / T]. Action (k,) in [-1, 1]: shares =
softmax(log(speed-proportional shares) + ACTION_SCALE * a), a residual over the speed-proportional split.
Reward = -latency / T - CROSSING_PENALTY * (cuts through a moving object), the accuracy term: such a cut risks
splitting an object, and its overlap margin is extra area.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from edgepool.errors import SpecError
from edgepool.scheduling.fleet import Fleet
from edgepool.scheduling.hode.regions import Split, split_regions
from edgepool.scheduling.queues import NodeQueues

ACTION_SCALE = 3.0
CROSSING_PENALTY = 0.05
OBS_CAP = 20.0


@dataclass(frozen=True)
class LoadConfig:
    """The simulated world around the frames: frame period, bytes per pixel on the wire, per-link bandwidth
    variability (log-AR(1): rho, sigma by node name, floor), and on/off background work per node."""

    frame_period_s: float = 0.1
    bytes_per_px: float = 1.0                      # 8-bit grayscale, uncompressed
    rho: float = 0.85
    sigma: dict = field(default_factory=lambda: {"laptop": 0.45, "xavier-nx": 0.25})
    sigma_default: float = 0.05
    bw_floor: float = 0.08
    bg_on_prob: float = 0.08                       # per frame, off -> on
    bg_off_prob: float = 0.15                      # per frame, on -> off
    bg_rate_per_s: float = 25.0                    # jobs/s while on
    bg_job_s: float = 0.03                         # mean job seconds (exponential) while on


@dataclass
class FrameResult:
    latency_s: float
    finish_s: np.ndarray      # (k,) per node, from the frame's time
    transfer_s: np.ndarray
    queue_s: np.ndarray
    compute_s: np.ndarray
    split: Split


class HodeEnv(gym.Env):
    """Frames of motion-mask traces (each (T, gh, gw) bool) scheduled over the fleet's nodes (all but the camera)."""

    metadata = {"render_modes": []}

    def __init__(self, traces: list[np.ndarray], fleet: Fleet, *, camera: str, block: int, flops_per_px: float,
                 load: LoadConfig = LoadConfig(), start_frame: int = 3):
        if not traces:
            raise SpecError("traces", 0, "at least one motion-mask trace")
        if camera not in fleet.names:
            raise SpecError("camera", camera, ", ".join(fleet.names))
        self.traces, self.fleet, self.load, self.block = traces, fleet, load, block
        self.cam = fleet.index(camera)
        self.nodes = [i for i in range(len(fleet)) if i != self.cam]
        self.k = len(self.nodes)
        self.flops_per_px, self.start_frame = flops_per_px, start_frame
        self.block_bytes = block * block * load.bytes_per_px
        self.block_flops = block * block * flops_per_px
        speeds = fleet.speeds[self.nodes]
        self.prop = speeds / speeds.sum()
        self.sigma = np.array([load.sigma.get(fleet.names[n], load.sigma_default) for n in self.nodes])
        self.observation_space = spaces.Box(0.0, OBS_CAP, shape=(3 * self.k + 2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.k,), dtype=np.float32)

    # ------------------------------------------------------------------ action <-> shares
    def shares(self, action) -> np.ndarray:
        a = np.clip(np.asarray(action, float).reshape(self.k), -1.0, 1.0)
        z = np.log(self.prop) + ACTION_SCALE * a
        e = np.exp(z - z.max())
        return e / e.sum()

    def action_for(self, shares: np.ndarray) -> np.ndarray:
        """The action whose shares are `shares` (positive), so fixed splits act through the same interface."""
        a = (np.log(np.maximum(shares, 1e-9)) - np.log(self.prop)) / ACTION_SCALE
        return np.clip(a - (a.max() + a.min()) / 2, -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ episode
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self.trace = self.traces[int(rng.integers(len(self.traces)))]
        self.t_index = self.start_frame
        self.now = 0.0
        self.queues = NodeQueues(self.k)
        self.log_bw = rng.normal(np.log(0.6), self.sigma)
        self.bw_seen = np.clip(np.exp(self.log_bw), self.load.bw_floor, 1.0)
        self.bg_on = rng.random(self.k) < 0.3
        self.last_latency = 0.0
        self._advance_bw()
        for _ in range(5):  # warm the queues so the first frame meets some background work
            self._background(self.now, self.now + self.load.frame_period_s)
            self.now += self.load.frame_period_s
        return self._obs(), {}

    def _advance_bw(self) -> None:
        l, rng = self.load, self.np_random
        self.log_bw = l.rho * self.log_bw + (1 - l.rho) * np.log(0.6) + self.sigma * rng.standard_normal(self.k)
        self.bw_now = np.clip(np.exp(self.log_bw), l.bw_floor, 1.0)

    def _background(self, t0: float, t1: float) -> None:
        l, rng = self.load, self.np_random
        flip = rng.random(self.k)
        self.bg_on = np.where(self.bg_on, flip >= l.bg_off_prob, flip < l.bg_on_prob)
        for i in np.flatnonzero(self.bg_on):
            for at in np.sort(rng.uniform(t0, t1, rng.poisson(l.bg_rate_per_s * (t1 - t0)))):
                self.queues.submit(i, float(at), float(rng.exponential(l.bg_job_s)))

    def block_seconds(self, bw_factor: np.ndarray) -> np.ndarray:
        """Marginal seconds per block on each node at these bandwidth factors: bytes over the link plus
        compute, (k,); the link's latency is paid once per region, not per block."""
        return np.array([self.fleet.transfer_s(self.cam, n, self.block_bytes / f) - self.fleet.latency[self.cam, n]
                         + self.fleet.compute_s(n, self.block_flops) for n, f in zip(self.nodes, bw_factor)])

    def _obs(self) -> np.ndarray:
        T = self.load.frame_period_s
        mask = self.trace[self.t_index]
        obs = np.concatenate([self.queues.backlog(self.now) / T, self.bw_seen,
                              self.block_seconds(self.bw_seen) / T, [mask.mean(), self.last_latency / T]])
        return np.clip(obs, 0.0, OBS_CAP).astype(np.float32)

    @property
    def mask(self) -> np.ndarray:
        return self.trace[self.t_index]

    def frame(self, shares: np.ndarray) -> FrameResult:
        """Cut this frame with `shares` and run its regions through links and queues (mutates the queues)."""
        split = split_regions(self.mask, shares)
        counts = split.counts
        tr, qu, co, fin = (np.zeros(self.k) for _ in range(4))
        for i, n in enumerate(self.nodes):
            if counts[i] == 0:
                continue
            tr[i] = self.fleet.transfer_s(self.cam, n, counts[i] * self.block_bytes / self.bw_now[i])
            co[i] = self.fleet.compute_s(n, counts[i] * self.block_flops)
            arrive = self.now + tr[i]
            qu[i] = max(0.0, float(self.queues.free_at[i]) - arrive)
            fin[i] = self.queues.submit(i, arrive, co[i]) - self.now
        return FrameResult(latency_s=float(fin.max()), finish_s=fin, transfer_s=tr, queue_s=qu, compute_s=co,
                           split=split)

    def step(self, action):
        T = self.load.frame_period_s
        res = self.frame(self.shares(action))
        reward = -res.latency_s / T - CROSSING_PENALTY * res.split.crossings
        info = {"latency_s": res.latency_s, "crossings": res.split.crossings, "frame": self.t_index,
                "blocks": res.split.counts.tolist(), "bw_factor": self.bw_now.tolist(),
                "queue_s": res.queue_s.tolist()}
        self._background(self.now, self.now + T)
        self.bw_seen = self.bw_now
        self.last_latency = res.latency_s
        self.now += T
        self.t_index += 1
        self._advance_bw()
        done = self.t_index >= len(self.trace)
        return (self._obs() if not done else np.zeros(self.observation_space.shape, np.float32)), float(reward), \
            done, False, info


# ----------------------------------------------------------------------------- fixed splits (edgepool Policy)
class EvenSplit:
    """Equal moving area per node (the even-split baseline)."""

    name = "even"

    def __init__(self, env: HodeEnv):
        self.action = env.action_for(np.full(env.k, 1.0 / env.k))

    def act(self, observation):
        return self.action


class ProportionalSplit:
    """Moving area in proportion to node speed (FLOP/s): blind to links and backlog, as the baseline is defined."""

    name = "proportional"

    def __init__(self, env: HodeEnv):
        self.action = env.action_for(env.prop)

    def act(self, observation):
        return self.action


class FinishBalanced:
    """A model-based reference (not a paper baseline): water-fill blocks so every node's predicted finish
    (backlog + blocks x seconds per block at last frame's bandwidth) is equal. Needs the region size."""

    name = "finish-balanced"

    def __init__(self, env: HodeEnv):
        self.env = env

    def act(self, observation):
        env, k = self.env, self.env.k
        backlog, per_block = observation[:k].astype(float), observation[2 * k:3 * k].astype(float)
        n = max(1.0, env.mask.sum())
        lo, hi = 0.0, float(backlog.max() + n * per_block.max())
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.maximum(0.0, (mid - backlog) / per_block).sum() < n else (lo, mid)
        blocks = np.maximum(0.0, (hi - backlog) / per_block)
        return env.action_for(np.maximum(blocks / blocks.sum(), 1e-4))
