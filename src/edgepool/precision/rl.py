"""An RL placement policy: PPO (stable-baselines3) walks the units and picks each one's target.

`PlacementEnv` is built from the problem's cost table and accuracy proxy only: measuring a placement runs
the emulator on the validation data, far too slow for the thousands of episodes RL needs. Each episode
draws a proxy budget, which the agent sees, so one trained policy serves every budget; `RLPolicy` then
finds, by measurement (`budget_search`), the budget whose placement keeps the floor.

Two rules of the environment keep every placement valid, so the agent never has to learn them:
an action outside `problem.targets_of(i)`, or one whose proxy would exceed the remaining budget, is
replaced by the most accurate allowed target (the CPU in fp32, proxy 0, where the unit allows it). The
rewards add up to minus the cost model's time of the placement over the all-CPU time.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import gymnasium as gym
import numpy as np

from edgepool.local_device import torch_threads
from edgepool.precision.placement import CPU, Placement, Target
from edgepool.precision.policy import PlacementPolicy
from edgepool.precision.policies import viterbi
from edgepool.precision.problem import (PlacementProblem, Targets, all_cpu, as_placement, budget_search,
                                        proxy_range)

EDGE_BUDGET_P = 0.1  # chance an episode's budget is exactly 0, and again exactly the maximum
TIME_SO_FAR_HIGH = 2.0  # a placement slower than twice all-CPU reads as twice
BUDGET_SLACK = 1e-12  # proxies are sums of floats


class PlacementEnv(gym.Env):
    """One episode places units 0..n-1 at a proxy budget drawn at reset (or given: `options={"budget": b}`).

    Action: the index of a target in the device's targets (`problem.costs.targets`, CPU first); invalid or
    over-budget choices become the most accurate allowed target (module docstring). Observation (Box,
    float32, in [0, 1] except time so far, in [0, 2]): unit position i/n; the unit's time on each target and
    the hand-over into each target at its input, over the all-CPU time; the unit's proxy on each target over
    the budget (clipped to 1); the remaining budget fraction; the budget's place on a log scale between the
    smallest positive proxy and the maximum (0 for a zero budget); the previous unit's target one-hot (the
    CPU before unit 0); the time so far over the all-CPU time. Reward per step: minus (the unit's time + the
    hand-over from the previous target) over the all-CPU time; the last step also pays the hand-over of the
    prediction back to the CPU and the weights streamed past the accelerator's memory.
    """

    metadata = {"render_modes": []}

    def __init__(self, problem: PlacementProblem):
        costs = problem.costs
        self.problem = problem
        self.targets: list[Target] = list(costs.targets)
        self.n, self.k = costs.num_units, len(self.targets)
        self.cpu_time = costs.time_s(all_cpu(problem))
        # rewards in units of the geometric mean of the all-CPU and the fastest time: with all-CPU time alone,
        # int8 against fp16 on a 15x faster accelerator differed by under 1% of an episode and PPO settled on fp16
        self.reward_scale = math.sqrt(self.cpu_time * costs.time_s(viterbi(problem, 0.0)))
        self.min_proxy, self.max_proxy = proxy_range(problem)
        self.allowed = [set(problem.targets_of(i)) for i in range(self.n)]
        self.fallback = [self._most_accurate(i) for i in range(self.n)]
        self.action_space = gym.spaces.Discrete(self.k)
        high = np.ones(self._obs_size(), dtype=np.float32)
        high[-1] = TIME_SO_FAR_HIGH
        self.observation_space = gym.spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32)
        self._start(0.0)

    def _obs_size(self) -> int:
        return 1 + 3 * self.k + 2 + self.k + 1

    def _proxy(self, i: int, target: Target) -> float:
        return self.problem.proxy[i].get(target.precision, 0.0)

    def _most_accurate(self, i: int) -> Target:
        """The allowed target with the smallest proxy, the CPU first among equals (device order)."""
        allowed = [t for t in self.targets if t in self.allowed[i]]
        if not allowed:
            raise ValueError(f"unit {i} allows none of the device's targets")
        return min(allowed, key=lambda t: self._proxy(i, t))

    def _start(self, budget: float) -> None:
        self.budget = float(budget)
        self.remaining = self.budget
        self.unit = 0
        self.chosen: list[Target] = []
        self.elapsed = 0.0

    def draw_budget(self) -> float:
        """Log-uniform over the proxy range, with exactly 0 and exactly the maximum now and then."""
        u = self.np_random.random()
        if self.max_proxy <= 0 or u < EDGE_BUDGET_P:
            return 0.0
        if u < 2 * EDGE_BUDGET_P:
            return self.max_proxy
        return float(math.exp(self.np_random.uniform(math.log(self.min_proxy), math.log(self.max_proxy))))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        budget = (options or {}).get("budget")
        self._start(self.draw_budget() if budget is None else max(float(budget), 0.0))
        return self._obs(), {}

    # ------------------------------------------------------------------ what the agent sees
    def _budget_position(self) -> float:
        if self.budget <= 0 or self.max_proxy <= self.min_proxy:
            return 0.0 if self.budget <= 0 else 1.0
        span = math.log(self.max_proxy / self.min_proxy)
        return min(max(math.log(self.budget / self.min_proxy) / span, 0.0), 1.0)

    def _obs(self) -> np.ndarray:
        i = min(self.unit, self.n - 1)  # the terminal observation repeats the last unit's features
        costs, previous = self.problem.costs, self.previous
        times = [costs.unit_s[i][t] / self.cpu_time for t in self.targets]
        handovers = [costs.handover_s(i, None, t) / self.cpu_time for t in self.targets]
        proxies = [min(self._proxy(i, t) / self.budget, 1.0) if self.budget > 0 else float(self._proxy(i, t) > 0)
                   for t in self.targets]
        remaining = self.remaining / self.budget if self.budget > 0 else 0.0
        one_hot = [float(t == previous) for t in self.targets]
        values = [self.unit / self.n, *times, *handovers, *proxies, remaining, self._budget_position(), *one_hot,
                  self.elapsed / self.cpu_time]
        return np.clip(np.asarray(values, dtype=np.float32), self.observation_space.low, self.observation_space.high)

    @property
    def previous(self) -> Target:
        """The target that holds the activation entering the current unit (the input starts on the CPU)."""
        return self.chosen[-1] if self.chosen else CPU

    # ------------------------------------------------------------------ what an action does
    def resolve(self, action: int) -> Target:
        """The target an action places the current unit on, after the validity and budget rules."""
        i, target = self.unit, self.targets[int(action)]
        if target not in self.allowed[i] or self._proxy(i, target) > self.remaining + BUDGET_SLACK:
            return self.fallback[i]
        return target

    def step(self, action):
        if self.unit >= self.n:
            raise RuntimeError("step after the episode ended; call reset")
        costs, i = self.problem.costs, self.unit
        target = self.resolve(action)
        seconds = costs.unit_s[i][target] + costs.handover_s(i, self.previous, target)
        streamed_before = costs.streamed_bytes(tuple(self.chosen))
        self.chosen.append(target)
        # weights past the accelerator's memory are charged when they overflow it, not at the end: the
        # same total, but the step that caused it pays
        seconds += (costs.streamed_bytes(tuple(self.chosen)) - streamed_before) / costs.device.accelerator.link_bandwidth
        self.remaining -= self._proxy(i, target)
        self.unit += 1
        done = self.unit == self.n
        if done:
            seconds += costs.handover_s(self.n, target, None)
        self.elapsed += seconds
        info = {"target": str(target), "substituted": target != self.targets[int(action)]}
        return self._obs(), -seconds / self.reward_scale, done, False, info

    @property
    def placement(self) -> Targets:
        return tuple(self.chosen)


def train_rl(problem: PlacementProblem, timesteps: int = 10_000, seed: int = 0,
             progress: Callable[[str], None] | None = None, n_steps: int = 512, net_arch=(64, 64),
             learning_rate: float = 1e-3, ent_coef: float = 0.01):
    """A stable-baselines3 PPO (`MlpPolicy`, CPU, one torch thread) trained on `PlacementEnv(problem)`.

    Undiscounted (gamma 1): an episode's return is exactly minus its placement's relative time."""
    from stable_baselines3 import PPO

    say = progress or (lambda msg: None)
    env = PlacementEnv(problem)
    env.reset(seed=seed)
    say(f"rl: training PPO for {timesteps} steps on {problem.num_units} units x {env.k} targets")
    t0 = time.perf_counter()
    with torch_threads(1):
        model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=128, n_epochs=8, gamma=1.0, gae_lambda=0.95,
                    learning_rate=learning_rate, ent_coef=ent_coef, seed=seed, verbose=0, device="cpu",
                    policy_kwargs={"net_arch": list(net_arch)})
        model.learn(total_timesteps=timesteps)
    say(f"rl: PPO trained in {time.perf_counter() - t0:.1f} s")
    return model


def rollout(model, problem: PlacementProblem, budget: float) -> Targets:
    """The placement `model` (anything with SB3's `predict`) makes in one deterministic episode at `budget`."""
    env = PlacementEnv(problem)
    obs, _ = env.reset(options={"budget": budget})
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, done, _, _ = env.step(int(action))
    return env.placement


class RLPolicy(PlacementPolicy):
    """PPO's placement at the largest proxy budget that keeps the floor when measured.

    Trains on the first problem it places, unless given a trained `model` (its action space must match the
    device's targets), and reuses that model afterwards: the budget is part of the observation, so one model
    serves every floor on one device (use one instance per device); it stays in `self.last_model`."""

    name = "rl (ppo)"

    def __init__(self, model=None, timesteps: int = 10_000, seed: int = 0,
                 progress: Callable[[str], None] | None = None):
        self.model = model
        self.timesteps = timesteps
        self.seed = seed
        self.progress = progress
        self.last_model = model

    def _model_for(self, problem: PlacementProblem):
        if self.model is None:
            self.model = train_rl(problem, self.timesteps, self.seed, self.progress)
        k = len(problem.costs.targets)
        if getattr(self.model.action_space, "n", k) != k:
            raise ValueError(f"the given model chooses among {self.model.action_space.n} targets; "
                             f"{problem.costs.device.name} has {k}")
        return self.model

    def place(self, problem: PlacementProblem) -> Placement:
        model = self._model_for(problem)
        self.last_model = model
        with torch_threads(1):
            targets = budget_search(problem, lambda budget: rollout(model, problem, budget))
        return as_placement(self.name, targets)
