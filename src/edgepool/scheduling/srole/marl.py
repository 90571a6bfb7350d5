"""SROLE's learners: independent PPO learners with parameter sharing, one network for every node's agent.

`AgentSlots` adapts the ParallelEnv to a stable-baselines3 VecEnv with one slot per agent, so one PPO model
collects every agent's transitions and updates the one shared network (each agent still acts on its own
observation only: independent learners, not a centralized critic). With a `Shield` in the loop, the joint action
the agents sampled is corrected before it runs; the network is trained on the action it proposed, with the
executed job's reward, and every agent whose proposal took part in a collision pays `redirect_penalty` more,
so that it learns to propose safe actions. `SharedAgents` is the trained network behind `Policy`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from edgepool.scheduling.policy import LearnedPolicy
from edgepool.scheduling.srole.env import SroleEnv
from edgepool.scheduling.srole.shield import Shield


def stack(env: SroleEnv, obs: dict[str, np.ndarray]) -> np.ndarray:
    """(agents, obs_dim) in agent order."""
    return np.stack([obs[a] for a in env.possible_agents])


class AgentSlots(VecEnv):
    """One VecEnv slot per agent of one SroleEnv; every episode restarts on the next of `seeds` (cycled)."""

    def __init__(self, env: SroleEnv, seeds: list[int], shield: Shield | None = None,
                 redirect_penalty: float = 0.0):
        agent = env.possible_agents[0]
        self.env = env  # before VecEnv's init, which reads the env's render_mode
        super().__init__(len(env.possible_agents), env.observation_space(agent), env.action_space(agent))
        self.seeds, self.shield, self.redirect_penalty = list(seeds), shield, redirect_penalty
        self.preferences: Callable[[np.ndarray], np.ndarray] | None = None  # (agents, obs) -> (agents, nodes)
        self.episodes = 0
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self.totals = {"jobs": 0, "proposed_collisions": 0, "executed_collisions": 0, "redirected": 0}

    def _next_episode(self) -> np.ndarray:
        seed = self.seeds[self.episodes % len(self.seeds)]
        self.episodes += 1
        obs, _ = self.env.reset(seed=seed)
        return stack(self.env, obs)

    def reset(self) -> np.ndarray:
        self._obs = self._next_episode()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(-1)

    def step_wait(self):
        env, names = self.env, self.env.possible_agents
        pending = env.pending()
        targets = {i: int(self._actions[i]) for i in pending}
        penalty = np.zeros(self.num_envs)
        proposed = env.collisions(targets)
        self.totals["proposed_collisions"] += len(proposed)
        if self.shield is not None and proposed:
            prefs = self.preferences(self._obs) if self.preferences else np.zeros((self.num_envs, len(names)))
            fix = self.shield.correct(targets, {i: prefs[i] for i in targets}, env.work(), env.backlog())
            # every agent whose proposal took part in a collision pays, not only the ones the shield moved
            penalty[[i for i, t in targets.items() if t in fix.collisions]] = self.redirect_penalty
            targets = fix.targets
            self.totals["redirected"] += len(fix.changed)
        before = env.tally.executed_collisions
        obs, rewards, terms, _, infos = env.step({names[i]: t for i, t in targets.items()})
        self.totals["executed_collisions"] += env.tally.executed_collisions - before
        self.totals["jobs"] += len(targets)
        reward = np.array([rewards.get(a, 0.0) for a in names], dtype=np.float32) - penalty
        done = bool(terms and all(terms.values()))
        stacked = stack(env, obs)
        info_list = [dict(infos.get(a, {})) for a in names]
        if done:
            for i in range(self.num_envs):
                info_list[i]["terminal_observation"] = stacked[i]
                info_list[i]["TimeLimit.truncated"] = False
            stacked = self._next_episode()
        self._obs = stacked
        return stacked, reward, np.full(self.num_envs, done), info_list

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self.env, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name, value, indices=None):
        setattr(self.env, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        return [getattr(self.env, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._indices(indices)]

    def _indices(self, indices):
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices


def action_probs(model, obs: np.ndarray) -> np.ndarray:
    """(agents, nodes) action probabilities of the shared network for (agents, obs_dim) observations."""
    with torch.no_grad():
        tensor = torch.as_tensor(obs, dtype=torch.float32, device=model.policy.device)
        return model.policy.get_distribution(tensor).distribution.probs.cpu().numpy()


class CollisionLog(BaseCallback):
    """Per PPO iteration (one rollout): jobs placed, collisions proposed and executed, agents redirected."""

    def __init__(self, slots: AgentSlots, progress: Callable[[int], None] | None = None):
        super().__init__()
        self.slots, self.progress, self.rows = slots, progress, []
        self._last = dict(slots.totals)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        now = dict(self.slots.totals)
        row = {k: now[k] - self._last[k] for k in now}
        row["iteration"] = len(self.rows) + 1
        row["timesteps"] = int(self.num_timesteps)
        self.rows.append(row)
        self._last = now
        if self.progress:
            self.progress(int(self.num_timesteps))


class SharedAgents(LearnedPolicy):
    """The shared network as every node's agent: each agent's argmax action from its own observation."""

    centralized = False

    def __init__(self, model, name: str, env: SroleEnv):
        super().__init__(model, name)
        self.env = env

    def preferences(self, observation: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        probs = action_probs(self.model, stack(self.env, observation))
        return {i: probs[i] for i in range(len(probs))}

    def act(self, observation: dict[str, np.ndarray]) -> dict[str, int]:
        actions, _ = self.model.predict(stack(self.env, observation), deterministic=True)
        return {a: int(actions[i]) for i, a in enumerate(self.env.possible_agents)}
