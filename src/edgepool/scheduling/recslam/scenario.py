"""RecSLAM (arXiv 2112.13222): robots' laser scans fused on edge servers, submaps merged on the cloud; which
robot goes to which server decides one fusion round's latency.

`RecSlamEnv` is the scenario's gymnasium environment (the same family as the other scenarios): a seeded site,
robots arrive one at a time, the action is the server. Policies roll out through it: the integer program
(`IpPolicy`, planned when the episode starts), earliest-completion greedy (online, from the observation, and
LPT-ordered), nearest server (ignoring capacity, as the baseline is defined; and a capacity-aware variant), and
random. There is nothing to learn, so `train` says so. `evaluate` first runs the real fusion (ICP + grid + cloud
merge) to calibrate per-scan work, then simulates rounds on held-out seeds.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from edgepool.cluster import example_cluster_path
from edgepool.errors import SpecError
from edgepool.scheduling.recslam.assignment import (greedy, greedy_bound, simulate_round, solve_ip)
from edgepool.scheduling.recslam.site import Calibration, RobotSite, SiteConfig, build_site, calibrate
from edgepool.scheduling.scenarios import Progress

SCENARIO = "recslam"
FEATURES = 5  # per server: load after taking the robot, distance, load now, fits in memory, in Wi-Fi range
CAP = 10.0  # observation cap (in units of the site's load scale) for out-of-range servers


def default_cluster() -> Path:
    path = example_cluster_path("recslam-site")
    if path is None:
        raise SpecError("cluster", "recslam-site", "the example cluster examples/clusters/recslam-site.yaml")
    return path


class RecSlamEnv(gym.Env):
    """Robots of a seeded site arrive one at a time (a seeded order); the action is the server for this robot.

    Observation (5 S + 1,): per server [load after taking this robot / scale, distance / 100 m, load / scale,
    fits in memory, in Wi-Fi range], then the share of robots still to come. `scale` = sum_r min_s cost / S (a
    lower bound on the optimal load). Reward: minus the growth of the largest load / scale, minus 1 per memory or
    range violation, so an episode's return is minus the final load surrogate. At the end `info` has the
    simulated round (`round_latency_s`, `robot_latency_s_mean`) and the assignment."""

    metadata = {"render_modes": []}

    def __init__(self, calibration: Calibration, cluster: str | Path | None = None,
                 config: SiteConfig = SiteConfig()):
        self.calibration, self.config = calibration, config
        self.cluster = str(cluster or default_cluster())
        probe = build_site(self.cluster, 0, calibration, config)
        self.n_servers = probe.problem.servers
        self.observation_space = spaces.Box(0.0, CAP, shape=(FEATURES * self.n_servers + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.n_servers)
        self.site: RobotSite | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        site_seed = int(self.np_random.integers(2 ** 31)) if seed is None else int(seed)
        self.site = build_site(self.cluster, site_seed, self.calibration, self.config)
        p = self.site.problem
        self.order = np.random.default_rng(site_seed + 1).permutation(p.robots)
        self.k = 0
        self.assign = np.full(p.robots, -1)
        self.load = np.zeros(p.servers)
        self.mem = np.zeros(p.servers)
        self.scale = float(np.min(p.cost, axis=1).sum() / p.servers)
        return self._obs(), {"robot": int(self.order[0]), "site_seed": site_seed}

    def _after(self, r: int) -> np.ndarray:
        p = self.site.problem
        return self.load + p.cost[r] + np.where(self.load > 0, 0.0, p.link_latency_s)

    def _obs(self) -> np.ndarray:
        p = self.site.problem
        if self.k >= p.robots:
            return np.zeros(self.observation_space.shape, np.float32)
        r = self.order[self.k]
        reach = np.isfinite(p.upload_s[r])
        after = np.where(reach, self._after(r) / self.scale, CAP)
        fits = self.mem + p.memory_bytes[r] <= p.capacity_bytes + 1e-6
        feats = np.stack([after, p.distance_m[r] / 100.0, self.load / self.scale, fits, reach], axis=1)
        obs = np.append(feats.reshape(-1), (p.robots - self.k) / p.robots)
        return np.clip(obs, 0.0, CAP).astype(np.float32)

    def step(self, action):
        p = self.site.problem
        s, r = int(action), int(self.order[self.k])
        if not 0 <= s < p.servers:
            raise SpecError("action", action, f"a server index in 0..{p.servers - 1}")
        before = self.load.max()
        bad = int(not np.isfinite(p.upload_s[r, s])) + int(self.mem[s] + p.memory_bytes[r] > p.capacity_bytes[s])
        if np.isfinite(p.upload_s[r, s]):
            self.load[s] = self._after(r)[s]
        self.mem[s] += p.memory_bytes[r]
        self.assign[r] = s
        self.k += 1
        reward = -(self.load.max() - before) / self.scale - bad
        done = self.k == p.robots
        info = {"robot": int(self.order[self.k]) if not done else None}
        if done:
            rnd = simulate_round(p, self.assign)
            info.update(round_latency_s=rnd.latency_s, robot_latency_s_mean=float(rnd.robot_latency_s.mean()),
                        load_s=p.objective(self.assign), violations=p.violations(self.assign),
                        assignment=self.assign.tolist())
        return self._obs(), float(reward), done, False, info


# ----------------------------------------------------------------------------- policies (edgepool Policy)
def _split(obs: np.ndarray) -> np.ndarray:
    return np.asarray(obs[:-1]).reshape(-1, FEATURES)  # (S, 5)


class NearestPolicy:
    """Each robot to the closest server; with `fit`, the closest in range with memory left (when any)."""

    def __init__(self, fit: bool = False):
        self.fit, self.name = fit, "nearest-fit" if fit else "nearest"

    def act(self, obs):
        f = _split(obs)
        ok = (f[:, 3] > 0) & (f[:, 4] > 0) if self.fit else np.ones(len(f), bool)
        ok = ok if ok.any() else np.ones(len(f), bool)
        return int(np.flatnonzero(ok)[f[ok, 1].argmin()])


class GreedyPolicy:
    """Earliest completion, online: the in-range server with memory left whose load after this robot is least."""

    name = "greedy"

    def act(self, obs):
        f = _split(obs)
        ok = (f[:, 3] > 0) & (f[:, 4] > 0)
        ok = ok if ok.any() else f[:, 4] > 0
        return int(np.flatnonzero(ok)[f[ok, 0].argmin()])


class RandomPolicy:
    """A uniformly random in-range server (seeded)."""

    name = "random"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def act(self, obs):
        return int(self.rng.choice(np.flatnonzero(_split(obs)[:, 4] > 0)))


class PlannedPolicy:
    """Plays an assignment planned when the episode starts (`prepare`), robot by robot in arrival order."""

    def __init__(self, name: str, planner: Callable):
        self.name, self.planner = name, planner
        self.plan, self.info = None, {}

    def prepare(self, env: RecSlamEnv) -> None:
        self.plan, self.info = self.planner(env.site.problem)
        self.order, self.k = env.order, 0

    def act(self, obs):
        s = int(self.plan[self.order[self.k]])
        self.k += 1
        return s


def ip_planner(time_limit_s: float):
    def plan(problem):
        sol = solve_ip(problem, time_limit_s=time_limit_s)
        return sol.assign, {"solve_s": sol.seconds, "status": sol.status, "load_s": sol.objective}
    return plan


def lpt_planner(problem):
    """Greedy in LPT order: robots by decreasing cheapest cost (the bound holds for any order)."""
    order = np.argsort(-np.min(problem.cost, axis=1), kind="stable")
    return greedy(problem, order=order), {}


def rollout(env: RecSlamEnv, policy, seed: int) -> dict:
    """One episode of `policy` on the site of `seed`; the final info plus the policy's plan info."""
    obs, _ = env.reset(seed=seed)
    if hasattr(policy, "prepare"):
        policy.prepare(env)
    done, ret = False, 0.0
    while not done:
        obs, reward, done, _, info = env.step(policy.act(obs))
        ret += reward
    info["return"] = ret
    info.update(getattr(policy, "info", {}))
    return info


# ----------------------------------------------------------------------------- train / evaluate
def train(out: Path, *, quick: bool = False, seed: int = 0,
          progress: Progress | None = None) -> dict:
    if progress:
        progress("train", 1, 1)
    return {"scenario": SCENARIO, "saved": None, "train_seeds": [], "seconds": 0.0,
            "note": "nothing to learn: the assignment is an integer program solved per round (and a greedy); "
                    "the baselines are fixed rules"}


def policies(seed: int, ip_time_limit_s: float) -> list:
    return [NearestPolicy(), NearestPolicy(fit=True), RandomPolicy(seed), GreedyPolicy(),
            PlannedPolicy("greedy-lpt", lpt_planner), PlannedPolicy("ip", ip_planner(ip_time_limit_s))]


def evaluate(out: Path, *, quick: bool = False, seed: int = 0, trained: Path | None = None,
             progress: Progress | None = None) -> dict:
    from edgepool.scheduling.recslam.plots import draw_fused_map, draw_latency, draw_site

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda *a: None)
    scans, robots, n_seeds = (12, 2, 4) if quick else (30, 3, 24)
    say("fusion (real)", 0, 1)
    t0 = time.perf_counter()
    cal = calibrate(seed, scans=scans, robots=robots)
    fusion_s = time.perf_counter() - t0
    say("fusion (real)", 1, 1)
    env = RecSlamEnv(cal)
    eval_seeds = [10_000 + 97 * seed + i for i in range(n_seeds)]
    names = [p.name for p in policies(0, 1.0)]
    rows = {n: [] for n in names}
    bounds, first = [], {}
    for i, s in enumerate(eval_seeds):
        say("evaluate", i, len(eval_seeds))
        for pol in policies(s, 5.0 if quick else 20.0):
            info = rollout(env, pol, s)
            rows[pol.name].append(info)
            if i == 0:
                first[pol.name] = np.array(info["assignment"])
        p = env.site.problem
        g_uncap = greedy(p, capacity=False)
        bounds.append({"greedy_load_s": p.objective(g_uncap), "bound_s": greedy_bound(p)})
        if i == 0:
            first_site = env.site
    say("evaluate", len(eval_seeds), len(eval_seeds))
    lat = {n: np.array([r["round_latency_s"] for r in rows[n]]) for n in names}
    rob = {n: np.array([r["robot_latency_s_mean"] for r in rows[n]]) for n in names}
    per_policy = {n: {"round_latency_s_mean": float(lat[n].mean()), "round_latency_s": lat[n].tolist(),
                      "robot_latency_s_mean": float(rob[n].mean()),
                      "load_surrogate_s_mean": float(np.mean([r["load_s"] for r in rows[n]])),
                      "violations_total": int(sum(r["violations"] for r in rows[n])),
                      "ratio_vs_nearest_mean": float(np.mean(lat[n] / lat["nearest"]))} for n in names}
    solve = np.array([r["solve_s"] for r in rows["ip"]])
    per_policy["ip"].update(solve_s_mean=float(solve.mean()), solve_s_max=float(solve.max()),
                            status=sorted({r["status"] for r in rows["ip"]}))
    summaries = {k: v.summary for k, v in cal.lidars.items()}
    metrics = {
        "recslam_latency_ratio_vs_nearest": float(np.mean(lat["ip"] / lat["nearest"])),
        "recslam_latency_ratio_vs_nearest_of_means": float(lat["ip"].mean() / lat["nearest"].mean()),
        "recslam_latency_ratio_vs_nearest_fit": float(np.mean(lat["ip"] / lat["nearest-fit"])),
        "recslam_greedy_latency_ratio_vs_nearest": float(np.mean(lat["greedy"] / lat["nearest"])),
        "recslam_greedy_lpt_latency_ratio_vs_nearest": float(np.mean(lat["greedy-lpt"] / lat["nearest"])),
        "recslam_random_latency_ratio_vs_nearest": float(np.mean(lat["random"] / lat["nearest"])),
        "recslam_robot_latency_ratio_vs_nearest": float(np.mean(rob["ip"] / rob["nearest"])),
        "recslam_ip_vs_greedy_gap": float(np.mean(lat["greedy"] / lat["ip"] - 1.0)),
        "recslam_ip_vs_greedy_lpt_gap": float(np.mean(lat["greedy-lpt"] / lat["ip"] - 1.0)),
        "recslam_ip_vs_greedy_load_gap": float(np.mean([g["load_s"] / i["load_s"] - 1.0
                                                        for g, i in zip(rows["greedy"], rows["ip"])])),
        "recslam_ip_solve_s_mean": float(solve.mean()),
        "recslam_ip_solve_s_max": float(solve.max()),
        "recslam_greedy_bound_held": float(np.mean([b["greedy_load_s"] <= b["bound_s"] + 1e-9 for b in bounds])),
        "recslam_map_accuracy": float(min(s["map_accuracy"] for s in summaries.values())),
        "recslam_map_accuracy_odometry_only": float(max(s["map_accuracy_odometry_only"]
                                                        for s in summaries.values())),
    }
    say("plots", 0, 3)
    plots = {"site": str(draw_site(first_site, {"nearest": first["nearest"], "ip": first["ip"]},
                                   out / "recslam_site.png")),
             "latency": str(draw_latency(lat, out / "recslam_latency.png")),
             "fused_map": str(draw_fused_map(next(iter(cal.lidars.values())).run, out / "recslam_fused_map.png"))}
    say("plots", 3, 3)
    return {
        "scenario": SCENARIO, "metrics": metrics, "policies": per_policy, "plots": plots,
        "fusion": summaries,
        "simulated": ["round and per-robot latencies (uploads over modelled 802.11ac, fusion at catalog speeds, "
                      "submap uploads, cloud merges)", "the load surrogate the IP and greedy minimise"],
        "measured": [f"fusion work per scan (FLOPs counted, seconds) from real ICP + grid fusion on this host "
                     f"({fusion_s:.1f} s)", "map accuracy of the real fused map against the world",
                     "IP solve seconds (HiGHS via scipy.optimize.milp) on this host"],
        "config": {"cluster": str(env.cluster), "site": _jsonable(asdict(env.config)), "quick": quick,
                   "fusion_scans_per_robot": scans, "fusion_robots": robots,
                   "ratio": "mean over eval seeds of per-seed ratios (ratio of means also given)",
                   "greedy_bound": "load <= sum_r min_s c[r,s] + max_s f[s] (uncapacitated, any order)",
                   "seconds": time.perf_counter() - start},
        "train_seeds": [], "eval_seeds": eval_seeds,
        "greedy_bound_checks": bounds,
    }


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
