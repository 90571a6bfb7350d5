"""`PlacementPolicy`: one interface for every way of placing units (baselines, ours, RL, the oracle)."""
from __future__ import annotations

from abc import ABC, abstractmethod

from edgepool.precision.placement import Placement
from edgepool.precision.problem import PlacementProblem


class PlacementPolicy(ABC):
    """`place` returns a placement that keeps `problem.floor` on the validation data when one exists
    (all-CPU always does); policies that ignore the floor (all-CPU, all-accelerator) say so in `uses_floor`."""

    name: str = "policy"
    uses_floor: bool = True

    @abstractmethod
    def place(self, problem: PlacementProblem) -> Placement:
        ...
