"""`SroleEnv`: SROLE's multi-agent environment, a PettingZoo ParallelEnv with one agent per edge node.

Every `step_s` seconds each agent whose inbox holds a job decides where the oldest one trains: any node of the
fleet (itself included). All agents decide at once from what they saw at the step's start (the backlogs of every
node then), which is how their choices can collide. Jobs go into the target's FIFO queue (`NodeQueues`) after
their data set crossed the link; a job's completion time is its finish minus its arrival (inbox wait, transfer,
queueing and run). The reward of an agent is minus its job's completion time over `reward_scale_s`; 0 without a
job. Everything here is simulated with the cost model.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from edgepool.errors import SpecError
from edgepool.scheduling.fleet import Fleet
from edgepool.scheduling.queues import NodeQueues
from edgepool.scheduling.srole.jobs import Job, JobKind, Workload, job_run_s, job_transfer_s
from edgepool.scheduling.srole.shield import colliding_nodes

FEATURES = 4  # per candidate node: log run seconds, log transfer seconds, log backlog seconds, is-self


@dataclass(frozen=True)
class SroleConfig:
    step_s: float = 30.0  # decision interval
    capacity_s: float = 300.0  # backlog seconds above which two or more jobs arriving at once collide
    reward_scale_s: float = 100.0  # seconds per unit of reward; also the observation's log scale
    max_steps: int = 10_000  # a cap on one episode's steps (drain included)

    def check(self) -> None:
        for name in ("step_s", "capacity_s", "reward_scale_s"):
            if not getattr(self, name) > 0:
                raise SpecError(f"srole.{name}", getattr(self, name), "a positive number of seconds")


@dataclass
class View:
    """What a centralized scheduler sees: the true node free times and every pending job with its costs."""

    now: float
    free_at: np.ndarray  # (nodes,)
    jobs: dict[int, Job]
    run_s: dict[int, np.ndarray]  # agent -> (nodes,)
    transfer_s: dict[int, np.ndarray]  # agent -> (nodes,)


@dataclass
class Tally:
    """Per-episode counts: jobs placed, collisions in proposed and in executed joint actions, agents moved."""

    jobs: int = 0
    proposed_collisions: int = 0
    executed_collisions: int = 0
    redirected: int = 0
    jct_s: list[float] = field(default_factory=list)


class SroleEnv(ParallelEnv):
    metadata = {"name": "srole_v0", "render_modes": []}

    def __init__(self, fleet: Fleet, kinds: list[JobKind], workload: Workload, config: SroleConfig = SroleConfig()):
        config.check()
        workload.check(len(fleet), len(kinds))
        self.fleet, self.kinds, self.workload, self.config = fleet, kinds, workload, config
        self.possible_agents = list(fleet.names)
        self.agents: list[str] = []
        self.render_mode = None
        n = len(fleet)
        self._obs_space = spaces.Box(-1.0, np.inf, shape=(FEATURES * n + 3,), dtype=np.float32)
        self._act_space = spaces.Discrete(n)
        self.tally = Tally()

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, options=None):
        rng = np.random.default_rng(seed)
        self._jobs = deque(self.workload.draw(rng))
        n = len(self.fleet)
        self.queues = NodeQueues(n)
        self.inbox: list[deque[Job]] = [deque() for _ in range(n)]
        self.now, self.steps = 0.0, 0
        self.tally = Tally()
        self.agents = list(self.possible_agents)
        self._admit()
        return self._observations(), {a: {} for a in self.agents}

    def _admit(self) -> None:
        """Move every job that arrived by `now` into its origin's inbox."""
        while self._jobs and self._jobs[0].arrival_s <= self.now:
            job = self._jobs.popleft()
            self.inbox[job.origin].append(job)

    def pending(self) -> dict[int, Job]:
        """Agent index -> the job it decides this step (the oldest in its inbox)."""
        return {i: box[0] for i, box in enumerate(self.inbox) if box}

    def work(self) -> dict[int, np.ndarray]:
        """Agent index -> its pending job's run seconds on every node."""
        return {i: job_run_s(job, self.kinds) for i, job in self.pending().items()}

    def backlog(self) -> np.ndarray:
        return self.queues.backlog(self.now)

    def view(self) -> View:
        jobs = self.pending()
        return View(now=self.now, free_at=self.queues.free_at.copy(), jobs=jobs,
                    run_s={i: job_run_s(j, self.kinds) for i, j in jobs.items()},
                    transfer_s={i: job_transfer_s(j, self.kinds, self.fleet) for i, j in jobs.items()})

    def _observations(self) -> dict[str, np.ndarray]:
        n, scale = len(self.fleet), self.config.reward_scale_s
        backlog = np.log1p(self.backlog() / scale)
        jobs = self.pending()
        out = {}
        for i, agent in enumerate(self.possible_agents):
            obs = np.zeros((n, FEATURES), dtype=np.float32)  # (candidates, features)
            has = i in jobs
            if has:
                obs[:, 0] = np.log1p(job_run_s(jobs[i], self.kinds) / scale)
                obs[:, 1] = np.log1p(job_transfer_s(jobs[i], self.kinds, self.fleet) / scale)
            obs[:, 2] = backlog
            obs[i, 3] = 1.0
            extra = [float(has), np.log1p(len(self.inbox[i])), len(jobs) / n]
            out[agent] = np.concatenate([obs.ravel(), extra]).astype(np.float32)
        return out

    def collisions(self, targets: dict[int, int]) -> list[int]:
        """Nodes where this joint action (agent index -> node) would collide at this step."""
        return colliding_nodes(targets, self.work(), self.backlog(), self.config.capacity_s)

    def step(self, actions: dict[str, int]):
        """Place every pending job where its agent's action says; actions of agents without a job are ignored."""
        jobs = self.pending()
        targets = {i: int(actions[self.possible_agents[i]]) for i in jobs}
        for i, t in targets.items():
            if not 0 <= t < len(self.fleet):
                raise SpecError(f"actions[{self.possible_agents[i]!r}]", t, f"a node index 0..{len(self.fleet) - 1}")
        self.tally.executed_collisions += len(self.collisions(targets))
        rewards = {a: 0.0 for a in self.agents}
        infos: dict[str, dict] = {a: {} for a in self.agents}
        for i in sorted(targets):
            job, target = self.inbox[i].popleft(), targets[i]
            ready = self.now + job_transfer_s(job, self.kinds, self.fleet)[target]
            finish = self.queues.submit(target, ready, float(job_run_s(job, self.kinds)[target]))
            jct = finish - job.arrival_s
            self.tally.jobs += 1
            self.tally.jct_s.append(jct)
            agent = self.possible_agents[i]
            rewards[agent] = -jct / self.config.reward_scale_s
            infos[agent] = {"jct_s": jct, "target": target}
        self.now += self.config.step_s
        self.steps += 1
        self._admit()
        done = (not self._jobs and not any(self.inbox)) or self.steps >= self.config.max_steps
        obs = self._observations()
        terminations = {a: done for a in self.agents}
        truncations = {a: False for a in self.agents}
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos
