"""`PlacementProblem`: what every placement policy reads, and the measured search they share.

Accuracy has two faces here. `proxy[i][p]` is an additive estimate of what running unit i in precision p
costs (the mean KL divergence from the fp32 model's predictions, from the sensitivity table: small
perturbations of the logits add up, so their KL roughly does); it only ranks choices. `measure` is the
real thing: the validation accuracy of a whole placement, run for real by the emulator. A policy that
optimizes against the proxy finds, by measurement, the largest proxy budget whose placement keeps the floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from edgepool.precision.cost import CostTable
from edgepool.precision.placement import CPU, Placement, Target

Targets = tuple[Target, ...]


@dataclass
class PlacementProblem:
    costs: CostTable
    proxy: list[dict[str, float]]  # unit -> precision -> additive accuracy-cost estimate (0 for fp32)
    drop_points: list[dict[str, float]]  # unit -> precision -> measured accuracy drop alone (points)
    reference_accuracy: float  # all-CPU (fp32) validation accuracy, a fraction
    max_loss_points: float  # the floor is reference - max_loss_points / 100
    measure: Callable[[tuple[str, ...]], float]  # validation accuracy of a precision tuple (measured)
    allowed: list[list[Target]] | None = None  # per-unit restriction of the device's targets
    measured: dict[tuple[str, ...], float] = field(default_factory=dict)  # shared by problems on one task
    queried: set[tuple[str, ...]] = field(default_factory=set)  # what this problem's policy asked to measure

    @property
    def num_units(self) -> int:
        return self.costs.num_units

    @property
    def floor(self) -> float:
        return self.reference_accuracy - self.max_loss_points / 100

    def targets_of(self, unit: int) -> list[Target]:
        return self.allowed[unit] if self.allowed else self.costs.targets

    def accuracy(self, targets: Targets) -> float:
        key = tuple(t.precision for t in targets)
        self.queried.add(key)
        if key not in self.measured:
            self.measured[key] = self.measure(key)
        return self.measured[key]

    def meets_floor(self, targets: Targets) -> bool:
        # a hair of tolerance: accuracies are ratios of integers, the floor is a float
        return self.accuracy(targets) >= self.floor - 1e-9

    def proxy_of(self, targets: Targets) -> float:
        return sum(self.proxy[i][t.precision] for i, t in enumerate(targets))

    def time_of(self, targets: Targets) -> float:
        return self.costs.time_s(targets)

    def with_floor(self, max_loss_points: float) -> "PlacementProblem":
        """The same problem at another floor (or afresh), sharing every measurement made so far."""
        return replace(self, max_loss_points=max_loss_points, queried=set())

    def fixing(self, prefix: Targets) -> "PlacementProblem":
        """The same problem with its first units fixed to `prefix`, sharing every measurement made so far."""
        allowed = [[prefix[i]] if i < len(prefix) else self.targets_of(i) for i in range(self.num_units)]
        return replace(self, allowed=allowed, queried=set())


def proxy_range(problem: PlacementProblem) -> tuple[float, float]:
    """The budgets worth telling apart: (smallest positive proxy, total of each unit's largest); (0, 0) when no
    precision costs anything."""
    positive = [v for row in problem.proxy for v in row.values() if v > 0]
    if not positive:
        return 0.0, 0.0
    return min(positive), sum(max(row.values()) for row in problem.proxy)


def all_cpu(problem: PlacementProblem) -> Targets:
    return (CPU,) * problem.num_units


def fastest_feasible(problem: PlacementProblem, candidates) -> Targets:
    """The fastest candidate that keeps the floor when measured (all-CPU, which always does, otherwise)."""
    best = all_cpu(problem)
    for targets in sorted(set(candidates), key=problem.time_of):
        if problem.time_of(targets) >= problem.time_of(best):
            break
        if problem.meets_floor(targets):
            best = targets
            break
    return best


def budget_search(problem: PlacementProblem, solve: Callable[[float], Targets], steps: int = 7) -> Targets:
    """The fastest measured-feasible placement `solve(budget)` gives, bisecting the proxy budget.

    Larger budgets give faster, less accurate placements. The unconstrained budget is tried first (if it
    keeps the floor nothing is faster); then a geometric bisection between the smallest positive proxy and
    the largest, keeping the fastest placement that met the floor (measured accuracy need not be monotone).
    """
    best = all_cpu(problem)

    def better(targets: Targets) -> bool:  # faster than the best so far, and keeps the floor when measured
        return problem.time_of(targets) < problem.time_of(best) and problem.meets_floor(targets)

    smallest, high = proxy_range(problem)
    fastest = solve(high)
    if better(fastest):
        return fastest
    if not smallest:  # no budget between 0 and `high` to try
        return best
    low = smallest / 2
    for _ in range(steps):
        mid = math.sqrt(low * high)
        targets = solve(mid)
        if problem.meets_floor(targets):
            best = targets if problem.time_of(targets) < problem.time_of(best) else best
            low = mid
        else:
            high = mid
    return best


def as_placement(policy: str, targets: Targets) -> Placement:
    return Placement(policy=policy, targets=tuple(targets))
