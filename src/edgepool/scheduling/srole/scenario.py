"""SROLE (ICDCS 2022, arXiv 2206.00774): every edge node schedules the training jobs that arrive at it with
multi-agent RL, and a shield corrects joint actions that collide.

The scenario: `examples/clusters/srole-edge.yaml` (8 unlike nodes at two sites), job kinds from zoo models planned
on every node by the cost model (`jobs`), seeded Poisson arrivals at unlike rates, the PettingZoo
environment (`env`), the shield (`shield`) and parameter-shared PPO (`marl`). Baselines run in the same
call on the same held-out workloads: the same agents trained and run without the shield, a centralized
least-loaded greedy, random, and (a reference, not a goal) a centralized earliest-finish greedy.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.errors import SpecError
from edgepool.scheduling.scenarios import Progress, tick
from edgepool.scheduling.srole.env import SroleConfig, SroleEnv, View
from edgepool.scheduling.srole.jobs import JobKind, Workload, plan_kind
from edgepool.scheduling.srole.shield import Shield

SCENARIO = "srole"
CLUSTER = "srole-edge"
# (zoo model, batch): CNN training jobs from 3.5 M to 138 M parameters
KINDS = (("mobilenet_v2", 32), ("resnet18", 32), ("resnet50", 32), ("vgg16", 16))
KIND_WEIGHTS = (0.3, 0.3, 0.25, 0.15)
# Relative arrival rate per node (cluster order): the small boards near the sensors collect the most data.
RATE_SHAPE = (1.0, 1.5, 2.0, 2.0, 1.0, 1.0, 1.5, 1.0)
LOAD = 0.85  # offered work over what the fleet can do at full speed, counted in run seconds alone
ITERATIONS = (20, 120)  # per job, uniform
DATASET_SAMPLES = (300, 3000)  # stored samples per job, uniform (SAMPLE_BYTES each)
REDIRECT_PENALTY = 2.0  # reward units each agent whose proposal collided pays in shielded training



@dataclass(frozen=True)
class Budget:
    horizon_s: float
    train_episodes: int
    timesteps: int  # PPO transitions per model, all agents together
    eval_episodes: int


BUDGETS = {True: Budget(horizon_s=900.0, train_episodes=4, timesteps=32_768, eval_episodes=2),
           False: Budget(horizon_s=1800.0, train_episodes=24, timesteps=393_216, eval_episodes=6)}



# ----------------------------------------------------------------------------- the environment
def build_env(quick: bool = False) -> SroleEnv:
    """The cluster, the planned job kinds and the workload at `LOAD`; deterministic (no seed involved)."""
    from edgepool.cluster import example_cluster_path, load_cluster
    from edgepool.costmodel import CostModel
    from edgepool.models import build_model
    from edgepool.profile import profile_model
    from edgepool.scheduling.fleet import Fleet

    fleet = Fleet.from_cluster(load_cluster(example_cluster_path(CLUSTER)), CostModel())
    kinds: list[JobKind] = []
    for model, batch in KINDS:
        kind = plan_kind(profile_model(build_model(model, meta=True), batch=1), fleet, batch)
        if not np.all(np.isfinite(kind.iteration_s)):
            bad = fleet.names[int(np.argmin(np.isfinite(kind.iteration_s)))]
            raise SpecError("srole.kinds", model, f"a model whose training fits every node ({bad} cannot hold it)")
        kinds.append(kind)
    return SroleEnv(fleet, kinds, workload_at(fleet.names, kinds, LOAD, BUDGETS[quick].horizon_s), SroleConfig())


def workload_at(names: list[str], kinds: list[JobKind], load: float, horizon_s: float) -> Workload:
    """Rates in `RATE_SHAPE` whose mean job needs `load` of the fleet's summed speed (1 / mean run second)."""
    w = np.asarray(KIND_WEIGHTS) / sum(KIND_WEIGHTS)
    iterations = np.mean(ITERATIONS)
    # jobs per second each node can finish of the mean job: sum over nodes of 1 / (mean run seconds there)
    mean_run = sum(wk * k.iteration_s * iterations for wk, k in zip(w, kinds))  # (nodes,)
    capacity = float(np.sum(1.0 / mean_run))
    shape = np.asarray(RATE_SHAPE[:len(names)]) / sum(RATE_SHAPE[:len(names)])
    return Workload(rates_per_s=tuple(float(x) for x in shape * load * capacity), horizon_s=horizon_s,
                    kind_weights=tuple(KIND_WEIGHTS), iterations=ITERATIONS, dataset_samples=DATASET_SAMPLES)


# ----------------------------------------------------------------------------- baselines
class LeastLoaded:
    """Centralized greedy: sees every node's true backlog and places the step's jobs one by one (oldest first)
    on the node with the fewest queued seconds, counting the jobs it has just placed; ties (idle nodes) go to
    the node that would finish the job first. It never waits on stale loads."""

    centralized, name = True, "greedy-least-loaded"

    def act(self, view: View) -> dict[int, int]:
        free = view.free_at.copy()
        out = {}
        for i in sorted(view.jobs, key=lambda i: (view.jobs[i].arrival_s, i)):
            backlog = np.maximum(free - view.now, 0.0)
            finish = np.maximum(view.now + view.transfer_s[i], free) + view.run_s[i]
            best = min(range(len(free)), key=lambda j: (backlog[j], finish[j]))
            free[best] = finish[best]
            out[i] = best
        return out


class EarliestFinish:
    """Centralized reference: each job (oldest first) to the node where it would finish first, given the true
    queues, its transfer and its run time there. Not a goal of the issue; shown so the margin is honest."""

    centralized, name = True, "greedy-earliest-finish"

    def act(self, view: View) -> dict[int, int]:
        free = view.free_at.copy()
        out = {}
        for i in sorted(view.jobs, key=lambda i: (view.jobs[i].arrival_s, i)):
            finish = np.maximum(view.now + view.transfer_s[i], free) + view.run_s[i]
            best = int(np.argmin(finish))
            free[best] = finish[best]
            out[i] = best
        return out


class RandomTargets:
    """Every agent sends its job to a node drawn uniformly (seeded)."""

    centralized, name = False, "random"

    def __init__(self, nodes: int, seed: int):
        self.nodes, self.rng = nodes, np.random.default_rng(seed)

    def act(self, observation: dict) -> dict[str, int]:
        return {a: int(self.rng.integers(self.nodes)) for a in observation}


def run_episode(env: SroleEnv, policy, seed: int, shield: Shield | None = None) -> dict:
    """One held-out episode of `policy` (decentralized agents, optionally shielded, or a centralized one)."""
    obs, _ = env.reset(seed=seed)
    names = env.possible_agents
    redirected = proposed = 0
    while env.agents:
        jobs = env.pending()
        if policy.centralized:
            targets = policy.act(env.view())
        else:
            actions = policy.act(obs)
            targets = {i: int(actions[names[i]]) for i in jobs}
        collisions = env.collisions(targets)
        proposed += len(collisions)
        if shield is not None and collisions:
            prefs = policy.preferences(obs)
            fix = shield.correct(targets, {i: prefs[i] for i in targets}, env.work(), env.backlog())
            targets = fix.targets
            redirected += len(fix.changed)
        obs, *_ = env.step({names[i]: t for i, t in targets.items()})
    t = env.tally
    return {"jct_s": list(t.jct_s), "jobs": t.jobs, "proposed_collisions": proposed,
            "executed_collisions": t.executed_collisions, "redirected": redirected}


# ----------------------------------------------------------------------------- training
def _seeds(seed: int, count: int, offset: int) -> list[int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError("seed", seed, "a non-negative integer")
    return [seed * 100_000 + offset + k for k in range(count)]


def _train_one(env: SroleEnv, seeds: list[int], shielded: bool, budget: Budget, seed: int,
               tick: Callable[[int], None]):
    from stable_baselines3 import PPO

    from edgepool.local_device import torch_threads
    from edgepool.scheduling.srole.marl import AgentSlots, CollisionLog, action_probs

    shield = Shield(env.config.capacity_s) if shielded else None
    slots = AgentSlots(env, seeds, shield=shield, redirect_penalty=REDIRECT_PENALTY if shielded else 0.0)
    n_steps = 128
    model = PPO("MlpPolicy", slots, n_steps=n_steps, batch_size=256, n_epochs=4, learning_rate=1e-3, gamma=0.0,
                gae_lambda=1.0, ent_coef=0.01, policy_kwargs=dict(net_arch=[64, 64]), seed=seed, device="cpu",
                verbose=0)
    slots.preferences = lambda obs: action_probs(model, obs)
    log = CollisionLog(slots, tick)
    with torch_threads(1):  # a small MLP: one thread is faster, and the same seed gives the same agents
        model.learn(total_timesteps=budget.timesteps, callback=log)
    return model, log.rows


def train(out: Path, *, quick: bool = False, seed: int = 0, progress: Progress | None = None) -> dict:
    """Train the shielded and the unshielded shared-PPO agents on the training seeds; save both under `out`."""
    start = time.perf_counter()
    budget = BUDGETS[quick]
    seeds = _seeds(seed, budget.train_episodes, 0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tick(progress, "build", 0, 1)
    env = build_env(quick)
    tick(progress, "build", 1, 1)
    logs = {}
    for k, shielded in enumerate((True, False)):
        name = "srole-shielded" if shielded else "marl-unshielded"
        stage = f"train {name}"
        model, rows = _train_one(env, seeds, shielded, budget, seed + k,
                                 lambda done, s=stage: tick(progress, s, done, budget.timesteps))
        model.save(out / f"{name}.zip")
        logs[name] = rows
    meta = {"scenario": SCENARIO, "saved": str(out), "train_seeds": seeds, "quick": quick,
            "timesteps_per_model": budget.timesteps, "collisions_per_iteration": logs,
            "seconds": time.perf_counter() - start}
    (out / "train.json").write_text(json.dumps(meta, indent=1))
    return meta


# ----------------------------------------------------------------------------- evaluation
def _summary(episodes: list[dict]) -> dict:
    jct = np.concatenate([e["jct_s"] for e in episodes])
    q = np.percentile(jct, [5, 25, 50, 75, 95])
    return {"mean_jct_s": float(jct.mean()), "jct_percentiles_s": dict(zip(("p5", "p25", "p50", "p75", "p95"),
                                                                           map(float, q))),
            "max_jct_s": float(jct.max()), "jobs": int(sum(e["jobs"] for e in episodes)),
            "proposed_collisions": int(sum(e["proposed_collisions"] for e in episodes)),
            "executed_collisions": int(sum(e["executed_collisions"] for e in episodes)),
            "redirected": int(sum(e["redirected"] for e in episodes))}


def _plots(out: Path, jcts: dict[str, np.ndarray], train_log: dict) -> dict[str, str]:
    from edgepool.plotting import draw_cdf, draw_series

    cdf = draw_cdf(jcts, out / "srole_jct_cdf.png", "job completion time, s (simulated)", unit=" s",
                   title="SROLE: job completion times on held-out workloads")
    series, window = {}, 8
    labels = {"srole-shielded": "srole-shielded (proposed; the shield corrected them)",
              "marl-unshielded": "marl-unshielded (proposed = executed)"}
    for name, rows in train_log.items():
        per = np.array([100.0 * r["proposed_collisions"] / max(r["jobs"], 1) for r in rows])
        smooth = np.convolve(per, np.ones(window) / window, mode="valid") if len(per) >= window else per
        first = len(per) - len(smooth) + 1
        series[labels.get(name, name)] = [(first + k, float(v)) for k, v in enumerate(smooth)]
    coll = draw_series(series, out / "srole_collisions_training.png", x_label="PPO iteration (rollout)",
                       y_label=f"collisions / 100 jobs ({window}-iteration mean)",
                       title="Collisions in the agents' joint actions during training (simulated)", steps=False)
    return {"jct_cdf": str(cdf), "collisions_over_training": str(coll)}


def evaluate(out: Path, *, quick: bool = False, seed: int = 0, trained: Path | None = None,
             progress: Progress | None = None) -> dict:
    """Every policy on the same held-out workloads; the metrics the issue names, and the two plots."""
    from stable_baselines3 import PPO

    from edgepool.scheduling.srole.marl import SharedAgents

    start = time.perf_counter()
    budget = BUDGETS[quick]
    eval_seeds = _seeds(seed, budget.eval_episodes, 50_000)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if trained is None:
        meta = train(out / "trained", quick=quick, seed=seed, progress=progress)
        trained = Path(meta["saved"])
    else:
        trained = Path(trained)
        if not (trained / "train.json").is_file():
            raise SpecError("trained", str(trained), "a folder written by `train` (with train.json)")
        meta = json.loads((trained / "train.json").read_text())
    env = build_env(quick)
    train_seeds = meta["train_seeds"]
    if set(train_seeds) & set(eval_seeds):
        raise SpecError("seed", seed, "a seed whose evaluation workloads differ from the training ones")
    shield = Shield(env.config.capacity_s)
    shielded = SharedAgents(PPO.load(trained / "srole-shielded.zip", device="cpu"), "srole-shielded", env)
    unshielded = SharedAgents(PPO.load(trained / "marl-unshielded.zip", device="cpu"), "marl-unshielded", env)
    runs = [("srole-shielded", shielded, shield), ("marl-unshielded", unshielded, None),
            ("greedy-least-loaded", LeastLoaded(), None), ("random", RandomTargets(len(env.fleet), seed), None),
            ("greedy-earliest-finish", EarliestFinish(), None)]
    episodes: dict[str, list[dict]] = {}
    total = len(runs) * len(eval_seeds)
    for k, (name, policy, sh) in enumerate(runs):
        episodes[name] = []
        for m, s in enumerate(eval_seeds):
            episodes[name].append(run_episode(env, policy, s, sh))
            tick(progress, "evaluate", k * len(eval_seeds) + m + 1, total)
    policies = {name: _summary(eps) for name, eps in episodes.items()}
    mean = {name: p["mean_jct_s"] for name, p in policies.items()}
    s, u = policies["srole-shielded"], policies["marl-unshielded"]
    metrics = {
        "srole_jct_ratio_vs_greedy": mean["srole-shielded"] / mean["greedy-least-loaded"],
        "srole_jct_ratio_vs_random": mean["srole-shielded"] / mean["random"],
        # collisions that happen (executed joint actions) with the shield over those without it, same workloads
        "srole_collision_ratio_vs_unshielded": s["executed_collisions"] / max(u["executed_collisions"], 1),
        # collisions the shield had to correct (in the shielded agents' proposals) over those the unshielded
        # agents executed: what the learning itself avoided, without the shield's help
        "srole_proposed_collision_ratio_vs_unshielded": s["proposed_collisions"] / max(u["executed_collisions"], 1),
        "srole_unsafe_actions_executed": s["executed_collisions"],
        "srole_jct_ratio_vs_earliest_finish": mean["srole-shielded"] / mean["greedy-earliest-finish"],
    }
    plots = _plots(out, {n: np.concatenate([e["jct_s"] for e in eps]) for n, eps in episodes.items()},
                   meta["collisions_per_iteration"])
    kinds = {k.model: {"batch": k.batch, "iteration_s": dict(zip(env.fleet.names, map(float, k.iteration_s))),
                       "microbatch": dict(zip(env.fleet.names, map(int, k.microbatch))),
                       "weights_mb": k.weights_bytes / 1e6} for k in env.kinds}
    result = {
        "scenario": SCENARIO, "metrics": metrics, "policies": policies, "plots": plots,
        "collisions_per_iteration": meta["collisions_per_iteration"],
        "simulated": ["job run times (roofline cost model, catalog devices, single-node training per job)",
                      "data-set and weight transfers (Fleet.transfer_s over the cluster's links)",
                      "arrivals (seeded Poisson per node)", "queues, completion times and collisions"],
        "measured": [],
        "config": {"cluster": CLUSTER, "nodes": env.fleet.names, "kinds": kinds, "kind_weights": KIND_WEIGHTS,
                   "workload": asdict(env.workload), "env": asdict(env.config), "load": LOAD,
                   "budget": asdict(budget), "redirect_penalty": REDIRECT_PENALTY, "quick": quick, "seed": seed,
                   "marl": "independent PPO learners with parameter sharing (one SB3 PPO network, one VecEnv slot "
                           "per node), shield in the training loop for srole-shielded"},
        "train_seeds": train_seeds, "eval_seeds": eval_seeds,
        "train_seconds": meta.get("seconds"), "seconds": time.perf_counter() - start,
    }
    (out / "srole.json").write_text(json.dumps(result, indent=1))
    return result
