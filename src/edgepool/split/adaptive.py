"""A3D-style adaptive offloading: per frame, choose where to run, at which resolution and coding, from the
bandwidth the device has seen and its queue, with a deep-RL (PPO) scheduler; compared with fixed choices and a
bandwidth-threshold rule on held-out bandwidth traces.

Simulation (`OffloadEnv`): a frame arrives every `frame_interval_s`. The chosen option's work runs through
three FIFO stages, each busy with one frame at a time, so frames wait when a stage is busy: device compute
(`device_s * device_slowdown`), the uplink transfer of `8 * bytes_per_image` bits integrated over the trace's
time-varying bandwidth, then `rtt_s` and server compute (`server_s * server_slowdown`). A device-only option
uses the device stage alone. A frame arriving while `max_in_flight` frames are unfinished is dropped.

Utility of one frame (the reward), with accuracy `a` and end-to-end latency `L` (arrival to result):

    u = a - lam * L      if the frame finishes within the deadline (L <= D)
    u = -p               if it finishes late (L > D) or is dropped

`lam` = `latency_weight` (per second), `D` = `deadline_s`, `p` = `late_penalty`. A sensible policy keeps most
frames on time, so its mean utility is positive and the ratios the benchmark reports are meaningful.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np

from edgepool.split.options import OptionMeasure
from edgepool.split.traces import BandwidthTrace, describe_traces

HISTORY = 5  # seconds of observed bandwidth in the state
OBS_LOW, OBS_HIGH = -2.0, 4.0


@dataclass(frozen=True)
class EnvConfig:
    """The scenario: frame rate, how much slower the device/server are than the measuring host, the utility."""

    frame_interval_s: float = 0.1
    device_slowdown: float = 8.0  # a Raspberry-Pi-class device: a 224-px MobileNetV2 ~0.2 s, too slow for 10 fps
    server_slowdown: float = 0.5
    rtt_s: float = 0.02
    latency_weight: float = 1.0
    deadline_s: float = 0.3
    late_penalty: float = 0.5
    max_in_flight: int = 8
    episode_frames: int = 300  # training windows; evaluation runs whole traces
    history: int = HISTORY

    def formula(self) -> str:
        return (f"u = accuracy - {self.latency_weight:g} * latency_s if latency_s <= {self.deadline_s:g} s, "
                f"else -{self.late_penalty:g} (late or dropped)")

    def utility(self, accuracy: float, latency_s: float | None) -> float:
        """The written formula; `latency_s` None means dropped."""
        if latency_s is None or latency_s > self.deadline_s:
            return -self.late_penalty
        return accuracy - self.latency_weight * latency_s


class _Link:
    """Cumulative bits the trace can carry, so a transfer's end is found exactly (the trace repeats past its end)."""

    def __init__(self, trace: BandwidthTrace):
        bps = np.asarray(trace.bps, dtype=float)
        if len(bps) == 0 or np.any(bps <= 0):
            raise ValueError(f"trace {trace.name}: bandwidth must be positive and non-empty")
        self.step = float(trace.step_s)
        self.n = len(bps)
        self.bps = bps.tolist()  # plain floats: this runs per frame, small numpy ops would dominate
        self.feature = _bw_feature(bps).tolist()
        self.cum_array = np.concatenate([[0.0], np.cumsum(bps) * self.step])
        self.cum = self.cum_array.tolist()
        self.total = self.cum[-1]
        self.period = self.n * self.step

    def bits_until(self, t: float) -> float:
        q, r = divmod(t, self.period)
        i = min(int(r // self.step), self.n - 1)
        return q * self.total + self.cum[i] + (r - i * self.step) * self.bps[i]

    def time_when(self, bits: float) -> float:
        q, rb = divmod(bits, self.total)
        i = min(int(np.searchsorted(self.cum_array, rb, side="right")) - 1, self.n - 1)
        return q * self.period + i * self.step + (rb - self.cum[i]) / self.bps[i]

    def send_end(self, start: float, bits: float) -> float:
        return self.time_when(self.bits_until(start) + bits) if bits > 0 else start

    def observed_index(self, now: float, k: int) -> list[int]:
        """The last k completed steps (oldest first; steps before 0 read as the first), as a device measured them."""
        last = int(now // self.step) - 1
        return [max(j, 0) % self.n for j in range(last - k + 1, last + 1)]

    def bandwidth_at(self, t: float) -> float:
        return self.bps[int(t // self.step) % self.n]


@dataclass
class _Frame:
    arrival: float
    finish: float
    send_start: float
    send_end: float
    bits: float


def _bw_feature(bps: np.ndarray | float) -> np.ndarray | float:
    return np.log10(np.asarray(bps) / 1e6) / 2  # 0.1 Mbit/s -> -0.5, 100 Mbit/s -> 1


def bandwidth_from_obs(obs: np.ndarray) -> float:
    """The last observed bandwidth (bits/s) in an `OffloadEnv` observation."""
    return float(1e6 * 10 ** (2 * float(obs[HISTORY - 1])))


class OffloadEnv(gym.Env):
    """Per-frame option choice over a bandwidth trace; see the module docstring for the queue and the utility.

    Observation (Box, float32): the last `history` 1-s bandwidths the device saw (log10 Mbit/s / 2), the device
    stage's backlog and the estimated uplink wait (queued bits / last bandwidth), both / deadline, frames in
    flight / max_in_flight, the last finished frame's latency / deadline. Nothing in it reveals future
    bandwidth. Action: the index of an option in `table`.
    """

    metadata = {"render_modes": []}

    def __init__(self, table: Sequence[OptionMeasure], traces: Sequence[BandwidthTrace],
                 config: EnvConfig | None = None, evaluation: bool = False):
        if not table or not traces:
            raise ValueError("OffloadEnv needs options and traces")
        self.table = list(table)
        self.traces = list(traces)
        self.config = config or EnvConfig()
        if self.config.history != HISTORY:
            raise ValueError(f"history is fixed at {HISTORY} steps")
        self.evaluation = evaluation  # a whole trace (reset option "trace", default 0) from t=0; else random windows
        self.action_space = gym.spaces.Discrete(len(self.table))
        n = HISTORY + 4
        self.observation_space = gym.spaces.Box(low=OBS_LOW, high=OBS_HIGH, shape=(n,), dtype=np.float32)
        self._links = [_Link(t) for t in self.traces]
        self._reset_state(0, 0.0, 1)

    def _reset_state(self, trace: int, start: float, frames: int) -> None:
        self.link = self._links[trace]
        self.trace_index = trace
        self.now = start
        self.frames_left = frames
        self.device_free = self.link_free = self.server_free = start
        self.in_flight: list[_Frame] = []
        self.last_latency = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cfg = self.config
        if self.evaluation:
            trace = int((options or {}).get("trace", 0))
            frames = int(round(self._links[trace].period / cfg.frame_interval_s))
            self._reset_state(trace, 0.0, frames)
        else:
            trace = int(self.np_random.integers(len(self._links)))
            period = self._links[trace].period
            window = cfg.episode_frames * cfg.frame_interval_s
            start = float(self.np_random.uniform(0, max(period - window, 0.0)))
            self._reset_state(trace, start, cfg.episode_frames)
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        cfg = self.config
        idx = self.link.observed_index(self.now, HISTORY)
        last_bw = self.link.bps[idx[-1]]
        queued = 0.0
        for f in self.in_flight:
            if f.send_end > self.now:
                sent = 0.0 if f.send_start >= self.now else self.link.bits_until(self.now) - self.link.bits_until(
                    f.send_start)
                queued += max(f.bits - sent, 0.0)
        values = [self.link.feature[i] for i in idx] + [
            max(self.device_free - self.now, 0.0) / cfg.deadline_s, queued / last_bw / cfg.deadline_s,
            sum(f.finish > self.now for f in self.in_flight) / cfg.max_in_flight, self.last_latency / cfg.deadline_s]
        return np.clip(np.array(values, dtype=np.float32), OBS_LOW, OBS_HIGH)

    def _run(self, m: OptionMeasure) -> float:
        """Schedule one frame through the stages from `now`; returns its latency."""
        cfg = self.config
        start = max(self.now, self.device_free)
        self.device_free = start + m.device_s * cfg.device_slowdown
        if m.option.location == "device":
            self.in_flight.append(_Frame(self.now, self.device_free, self.device_free, self.device_free, 0.0))
            return self.device_free - self.now
        bits = 8.0 * m.bytes_per_image
        send_start = max(self.device_free, self.link_free)
        self.link_free = self.link.send_end(send_start, bits)
        server_start = max(self.link_free + cfg.rtt_s, self.server_free)
        self.server_free = server_start + m.server_s * cfg.server_slowdown
        self.in_flight.append(_Frame(self.now, self.server_free, send_start, self.link_free, bits))
        return self.server_free - self.now

    def step(self, action):
        cfg = self.config
        m = self.table[int(action)]
        self.in_flight = [f for f in self.in_flight if f.finish > self.now]
        if len(self.in_flight) >= cfg.max_in_flight:
            latency = None
        else:
            latency = self._run(m)
        reward = cfg.utility(m.accuracy, latency)
        info = {"latency_s": latency, "option": m.option.name, "dropped": latency is None,
                "bandwidth_bps": self.link.bandwidth_at(self.now)}
        self.now += cfg.frame_interval_s
        done_frames = [f for f in self.in_flight if f.finish <= self.now]
        if done_frames:
            last = max(done_frames, key=lambda f: f.finish)
            self.last_latency = last.finish - last.arrival
        self.frames_left -= 1
        truncated = self.frames_left <= 0
        return self._obs(), float(reward), False, truncated, info


class FixedPolicy:
    """Always the same option: what a system without adaptation does."""

    def __init__(self, action: int):
        self.action = int(action)

    def predict(self, obs, deterministic: bool = True):
        return self.action, None


class ThresholdHeuristic:
    """From the last observed bandwidth, the option with the best modelled utility (`OptionMeasure.latency_s`).

    It ignores the current queue but is not naive about load: options whose slowest stage (device, transfer or
    server) cannot keep up with the frame rate at that bandwidth are skipped while any option can. Computed once
    per bandwidth bucket, so it is a fixed bandwidth-threshold rule."""

    def __init__(self, table: Sequence[OptionMeasure], config: EnvConfig | None = None):
        self.table = list(table)
        self.config = config or EnvConfig()
        self._cache: dict[int, int] = {}

    def choose(self, bandwidth_bps: float) -> int:
        key = int(round(40 * math.log10(max(bandwidth_bps, 1.0))))  # ~6% buckets
        if key not in self._cache:
            self._cache[key] = self._best(10 ** (key / 40))
        return self._cache[key]

    def _best(self, bw: float) -> int:
        cfg = self.config
        scored = []
        for i, m in enumerate(self.table):
            latency = m.latency_s(bw, cfg.device_slowdown, cfg.server_slowdown, cfg.rtt_s)
            stage = max(m.device_s * cfg.device_slowdown, m.server_s * cfg.server_slowdown,
                        0.0 if m.option.location == "device" else 8 * m.bytes_per_image / bw)
            scored.append((stage <= cfg.frame_interval_s, cfg.utility(m.accuracy, latency), -latency, i))
        return max(scored)[3]

    def predict(self, obs, deterministic: bool = True):
        return self.choose(bandwidth_from_obs(obs)), None


def train_agent(table: Sequence[OptionMeasure], train_traces: Sequence[BandwidthTrace], timesteps: int = 100_000,
                seed: int = 0, config: EnvConfig | None = None, n_steps: int = 2048, net_arch=(64, 64),
                gamma: float = 0.9, learning_rate: float = 1e-3, ent_coef: float = 0.001):
    """A stable-baselines3 PPO (`MlpPolicy`) trained on random windows of the training traces, one thread."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    env = OffloadEnv(table, train_traces, config)
    env.reset(seed=seed)
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=256, n_epochs=8, gamma=gamma, gae_lambda=0.9,
                learning_rate=learning_rate, ent_coef=ent_coef, seed=seed, verbose=0, device="cpu",
                policy_kwargs={"net_arch": list(net_arch)})
    model.learn(total_timesteps=timesteps)
    return model


@dataclass
class Rollout:
    """One policy's frames on one trace (for figures and tests)."""

    trace: str
    times_s: list[float] = field(default_factory=list)
    bandwidth_bps: list[float] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    latencies_s: list[float | None] = field(default_factory=list)
    utilities: list[float] = field(default_factory=list)


def rollout(policy, table: Sequence[OptionMeasure], trace: BandwidthTrace,
            config: EnvConfig | None = None) -> Rollout:
    """Run `policy` (anything with SB3's `predict(obs, deterministic)`) over a whole trace from t=0."""
    env = OffloadEnv(table, [trace], config, evaluation=True)
    obs, _ = env.reset(options={"trace": 0})
    out = Rollout(trace=trace.name)
    done = False
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        t = env.now
        obs, reward, terminated, truncated, info = env.step(int(action))
        out.times_s.append(t)
        out.bandwidth_bps.append(info["bandwidth_bps"])
        out.actions.append(int(action))
        out.latencies_s.append(info["latency_s"])
        out.utilities.append(reward)
        done = terminated or truncated
    return out


def evaluate(policy, table: Sequence[OptionMeasure], traces: Sequence[BandwidthTrace],
             config: EnvConfig | None = None) -> float:
    """Mean utility per frame over whole traces (deterministic actions, every trace from t=0)."""
    total, frames = 0.0, 0
    for trace in traces:
        r = rollout(policy, table, trace, config)
        total += sum(r.utilities)
        frames += len(r.utilities)
    return total / max(frames, 1)


@dataclass
class AdaptiveResult:
    """Mean utility per frame on held-out traces for PPO, the heuristic and every fixed option."""

    utilities: dict[str, float]  # "ppo", "heuristic", "fixed:<option name>"
    best_fixed: str
    utility_ratio_vs_best_fixed: float
    utility_ratio_vs_heuristic: float
    formula: str
    traces: str
    config: dict
    timesteps: int
    seed: int
    train_seconds: float = 0.0
    example: dict | None = None  # one held-out trace: times, bandwidth, the options PPO and the heuristic chose

    def to_dict(self) -> dict:
        return asdict(self)


def compare(table: Sequence[OptionMeasure], train_traces: Sequence[BandwidthTrace],
            test_traces: Sequence[BandwidthTrace], timesteps: int = 100_000, seed: int = 0,
            config: EnvConfig | None = None, progress: Callable[[str], None] | None = None) -> AdaptiveResult:
    """Train PPO on `train_traces`, then score it, the heuristic and each fixed option on `test_traces`."""
    import time

    cfg = config or EnvConfig()
    say = progress or (lambda msg: None)
    utilities: dict[str, float] = {}
    for i, m in enumerate(table):
        utilities[f"fixed:{m.option.name}"] = evaluate(FixedPolicy(i), table, test_traces, cfg)
    heuristic = ThresholdHeuristic(table, cfg)
    utilities["heuristic"] = evaluate(heuristic, table, test_traces, cfg)
    say(f"fixed and heuristic scored on {len(test_traces)} held-out traces; training PPO for {timesteps} steps")
    t0 = time.perf_counter()
    model = train_agent(table, train_traces, timesteps, seed, cfg)
    train_s = time.perf_counter() - t0
    utilities["ppo"] = evaluate(model, table, test_traces, cfg)
    say(f"PPO trained in {train_s:.0f} s: mean utility {utilities['ppo']:.3f}")
    best_fixed = max((k for k in utilities if k.startswith("fixed:")), key=utilities.get)
    ex_ppo = rollout(model, table, test_traces[0], cfg)
    ex_heur = rollout(heuristic, table, test_traces[0], cfg)
    names = [m.option.name for m in table]
    example = {"trace": ex_ppo.trace, "times_s": ex_ppo.times_s, "bandwidth_bps": ex_ppo.bandwidth_bps,
               "ppo": [names[a] for a in ex_ppo.actions], "heuristic": [names[a] for a in ex_heur.actions]}

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return AdaptiveResult(utilities=utilities, best_fixed=best_fixed,
                          utility_ratio_vs_best_fixed=ratio(utilities["ppo"], utilities[best_fixed]),
                          utility_ratio_vs_heuristic=ratio(utilities["ppo"], utilities["heuristic"]),
                          formula=cfg.formula(), traces=describe_traces(list(test_traces)), config=asdict(cfg),
                          timesteps=timesteps, seed=seed, train_seconds=train_s, example=example)


def draw_adaptive(result: AdaptiveResult, path: str | Path, top_fixed: int = 8) -> Path:
    """Bars of mean utility (PPO, heuristic, the best fixed options); below, one held-out trace with the options
    PPO and the heuristic chose."""
    import matplotlib.pyplot as plt

    from edgepool.plotting import save_figure

    fixed = sorted((k for k in result.utilities if k.startswith("fixed:")), key=result.utilities.get,
                   reverse=True)[:top_fixed]
    labels = ["ppo", "heuristic", *fixed]
    values = [result.utilities[k] for k in labels]
    colors = ["#C44E52", "#4C72B0"] + ["#8C8C8C"] * len(fixed)
    ex = result.example
    fig, axes = plt.subplots(3 if ex else 1, 1, figsize=(9, 9 if ex else 3.8), squeeze=False, layout="constrained",
                             height_ratios=[1.2, 0.8, 1] if ex else None)
    ax = axes[0][0]
    ax.barh(range(len(labels)), values, color=colors)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([k.removeprefix("fixed:") for k in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean utility per frame (held-out traces)")
    ax.set_title(f"PPO / best fixed {result.utility_ratio_vs_best_fixed:.2f}x, PPO / heuristic "
                 f"{result.utility_ratio_vs_heuristic:.2f}x\n{result.formula}", fontsize=8)
    if ex:
        ax = axes[1][0]
        ax.step(ex["times_s"], np.asarray(ex["bandwidth_bps"]) / 1e6, where="post", color="#8C8C8C")
        ax.set_yscale("log")
        ax.set_ylabel("bandwidth (Mbit/s)")
        ax.set_title(f"held-out trace {ex['trace']}", fontsize=8)
        ax = axes[2][0]
        names = sorted(set(ex["ppo"]) | set(ex["heuristic"]))
        ax.plot(ex["times_s"], [names.index(n) - 0.12 for n in ex["heuristic"]], "|", ms=4, color="#4C72B0",
                label="heuristic")
        ax.plot(ex["times_s"], [names.index(n) + 0.12 for n in ex["ppo"]], "|", ms=4, color="#C44E52", label="ppo")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=6)
        ax.set_xlim(axes[1][0].get_xlim())
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)
