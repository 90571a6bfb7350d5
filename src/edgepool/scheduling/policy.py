"""`Policy`: the one interface of every scheduler here, learned or hand-written, so one evaluation loop runs all.

`act(observation)` returns the action the scenario's environment accepts. A multi-agent scenario passes one
observation per agent and gets one action per agent (a dict, PettingZoo's parallel convention). Learned policies
wrap a stable-baselines3 model; `predict(obs, deterministic=True)` is what they call.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Policy(Protocol):
    name: str

    def act(self, observation: Any) -> Any:
        """The action for this observation (deterministic at evaluation)."""


class LearnedPolicy:
    """A trained stable-baselines3 model behind `Policy`: the deterministic action of its network."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def act(self, observation):
        action, _ = self.model.predict(np.asarray(observation, dtype=np.float32), deterministic=True)
        return action
