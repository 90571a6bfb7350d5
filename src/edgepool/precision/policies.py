"""The placement policies: the two uniform placements, MLMP's two heuristics, ours, and the oracle.

MLMP (Tan and Cao) is the baseline FLEX improves on: Min-Time moves the units that save the most time to
the accelerator while the measured accuracy keeps the floor; Max-Accuracy starts on the accelerator and
moves the most accuracy-critical units back to the CPU within a time budget. Ours solves the placement as
a shortest path: a Viterbi pass over units x targets prices time, hand-overs and a Lagrange multiplier on
the accuracy proxy, a greedy fill spends what budget the multiplier left, and `budget_search` sets the
budget by measurement. The oracle is exact: exhaustive over measured placements where they are few, else a
mixed-integer program (HiGHS, through scipy) over the same proxy at a fine grid of budgets, each measured.
"""
from __future__ import annotations

import itertools

import numpy as np

from edgepool.precision.placement import CPU, Placement, Target
from edgepool.precision.policy import PlacementPolicy
from edgepool.precision.problem import (PlacementProblem, Targets, all_cpu, as_placement, budget_search,
                                        fastest_feasible, proxy_range)


def fastest_target(problem: PlacementProblem, unit: int) -> Target:
    return min(problem.targets_of(unit), key=lambda t: (problem.costs.unit_s[unit][t], t.side == "cpu"))


class AllCpu(PlacementPolicy):
    name, uses_floor = "all-cpu", False

    def place(self, problem: PlacementProblem) -> Placement:
        return as_placement(self.name, all_cpu(problem))


class AllAccelerator(PlacementPolicy):
    """Every unit at the accelerator's fastest precision."""

    name, uses_floor = "all-accelerator", False

    def place(self, problem: PlacementProblem) -> Placement:
        return as_placement(self.name, tuple(fastest_target(problem, i) for i in range(problem.num_units)))


class MlmpMinTime(PlacementPolicy):
    """From all-CPU, try the units in order of compute time saved on the accelerator; keep a move if it
    shortens the modelled time (hand-overs included) and the measured accuracy still meets the floor (a unit
    that fails either stays on the CPU and the next is tried). One unit at a time: a run of small units that
    only pays off when moved together stays on the CPU."""

    name = "mlmp min-time"

    def place(self, problem: PlacementProblem) -> Placement:
        current = list(all_cpu(problem))
        saving = {i: problem.costs.unit_s[i][CPU] - problem.costs.unit_s[i][fastest_target(problem, i)]
                  for i in range(problem.num_units)}
        for i in sorted(saving, key=lambda i: -saving[i]):
            if saving[i] <= 0:
                continue
            trial = current.copy()
            trial[i] = fastest_target(problem, i)
            if problem.time_of(tuple(trial)) < problem.time_of(tuple(current)) and problem.meets_floor(tuple(trial)):
                current = trial
        return as_placement(self.name, tuple(current))


class MlmpMaxAccuracy(PlacementPolicy):
    """From all-accelerator, move units back to the CPU, most accuracy-critical (largest measured drop)
    first, while the estimated time stays within `time_budget_s`. Without a budget, the smallest budget
    whose placement meets the floor is found by bisection (each step measured)."""

    name = "mlmp max-accuracy"

    def __init__(self, time_budget_s: float | None = None, steps: int = 8):
        self.time_budget_s, self.steps = time_budget_s, steps

    def within(self, problem: PlacementProblem, budget_s: float) -> Targets:
        current = list(AllAccelerator().place(problem).targets)
        order = sorted(range(problem.num_units), key=lambda i: -problem.drop_points[i].get(current[i].precision, 0))
        for i in order:
            if current[i] == CPU:
                continue
            trial = current.copy()
            trial[i] = CPU
            if problem.time_of(tuple(trial)) <= budget_s:
                current = trial
        return tuple(current)

    def place(self, problem: PlacementProblem) -> Placement:
        if self.time_budget_s is not None:
            return as_placement(self.name, self.within(problem, self.time_budget_s))
        low = problem.time_of(AllAccelerator().place(problem).targets)
        high = problem.time_of(all_cpu(problem))
        best, fastest = all_cpu(problem), self.within(problem, low)
        if problem.meets_floor(fastest):
            return as_placement(self.name, fastest)
        for _ in range(self.steps):
            mid = (low + high) / 2
            targets = self.within(problem, mid)
            if problem.meets_floor(targets):
                best = min(best, targets, key=problem.time_of)
                high = mid
            else:
                low = mid
        return as_placement(self.name, best)


# ---------------------------------------------------------------------------------------------- ours
def viterbi(problem: PlacementProblem, multiplier: float) -> Targets:
    """Minimum of time + hand-overs + multiplier x proxy over every placement (exact, O(units x targets^2))."""
    costs, n = problem.costs, problem.num_units
    # best[t] = (cost of the best prefix ending in target t, that prefix)
    best: dict[Target, tuple[float, Targets]] = {}
    for t in problem.targets_of(0):
        best[t] = (costs.handover_s(0, None, t) + costs.unit_s[0][t] + multiplier * problem.proxy[0][t.precision],
                   (t,))
    for i in range(1, n):
        step = {}
        for t in problem.targets_of(i):
            own = costs.unit_s[i][t] + multiplier * problem.proxy[i][t.precision]
            prev, (cost, path) = min(best.items(), key=lambda kv: kv[1][0] + costs.handover_s(i, kv[0], t))
            step[t] = (cost + costs.handover_s(i, prev, t) + own, path + (t,))
        best = step
    _, (_, path) = min(best.items(), key=lambda kv: kv[1][0] + costs.handover_s(n, kv[0], None))
    return path


def fill(problem: PlacementProblem, targets: Targets, budget: float) -> Targets:
    """Greedy single-unit moves that cut the modelled time (hand-overs and streamed weights included) while
    the proxy stays within budget, best time saved per proxy spent first."""
    current = tuple(targets)
    while True:
        base_time, base_proxy = problem.time_of(current), problem.proxy_of(current)
        best, best_score = None, 0.0
        for i in range(problem.num_units):
            for t in problem.targets_of(i):
                if t == current[i]:
                    continue
                trial = current[:i] + (t,) + current[i + 1:]
                saved, spent = base_time - problem.time_of(trial), problem.proxy_of(trial) - base_proxy
                if saved <= 0 or problem.proxy_of(trial) > budget:
                    continue
                score = saved / max(spent, 1e-12)
                if score > best_score:
                    best, best_score = trial, score
        if best is None:
            return current
        current = best


def lagrangian(problem: PlacementProblem, budget: float, iterations: int = 40) -> Targets:
    """The fastest Viterbi placement within the proxy budget over multipliers (bisection), then `fill`."""
    if problem.proxy_of(viterbi(problem, 0.0)) <= budget:
        return fill(problem, viterbi(problem, 0.0), budget)
    low, high = 0.0, 1.0
    while problem.proxy_of(viterbi(problem, high)) > budget and high < 1e12:
        high *= 10
    for _ in range(iterations):
        mid = (low + high) / 2
        if problem.proxy_of(viterbi(problem, mid)) <= budget:
            high = mid
        else:
            low = mid
    return fill(problem, viterbi(problem, high), budget)


class Ours(PlacementPolicy):
    """Lagrangian shortest path + greedy fill, with the proxy budget set by a few measurements."""

    name = "ours (lagrangian)"

    def __init__(self, steps: int = 7):
        self.steps = steps

    def place(self, problem: PlacementProblem) -> Placement:
        return as_placement(self.name, budget_search(problem, lambda b: lagrangian(problem, b), self.steps))


# ---------------------------------------------------------------------------------------------- oracle
def milp(problem: PlacementProblem, budget: float) -> Targets:
    """The exact fastest placement within the proxy budget: hand-overs linearized by pair variables,
    streamed weights by one continuous excess variable. Solved by HiGHS (`scipy.optimize.milp`)."""
    from scipy.optimize import Bounds, LinearConstraint, milp as solve

    costs, n = problem.costs, problem.num_units
    options = [problem.targets_of(i) for i in range(n)]
    x = {(i, t): k for k, (i, t) in enumerate((i, t) for i in range(n) for t in options[i])}
    y = {}
    for i in range(1, n):
        for a in options[i - 1]:
            for b in options[i]:
                y[(i, a, b)] = len(x) + len(y)
    excess = len(x) + len(y)
    size = excess + 1
    objective = np.zeros(size)
    for (i, t), k in x.items():
        objective[k] = costs.unit_s[i][t]
        if i == 0:
            objective[k] += costs.handover_s(0, None, t)
        if i == n - 1:
            objective[k] += costs.handover_s(n, t, None)
    for (i, a, b), k in y.items():
        objective[k] = costs.handover_s(i, a, b)
    link = costs.device.accelerator
    objective[excess] = 1.0 / link.link_bandwidth
    rows, lower, upper = [], [], []

    def row(entries: dict[int, float], lo: float, hi: float):
        r = np.zeros(size)
        for k, v in entries.items():
            r[k] += v
        rows.append(r), lower.append(lo), upper.append(hi)

    for i in range(n):
        row({x[i, t]: 1 for t in options[i]}, 1, 1)
    for i in range(1, n):
        for a in options[i - 1]:
            row({**{y[i, a, b]: 1 for b in options[i]}, x[i - 1, a]: -1}, 0, 0)
        for b in options[i]:
            row({**{y[i, a, b]: 1 for a in options[i - 1]}, x[i, b]: -1}, 0, 0)
    row({k: problem.proxy[i][t.precision] for (i, t), k in x.items()}, -np.inf, budget)
    from edgepool.costmodel import PRECISION_BYTES

    placed = {k: costs.units[i].param_bytes * PRECISION_BYTES[t.precision] / 4
              for (i, t), k in x.items() if t.on_accelerator}
    row({**placed, excess: -1}, -np.inf, link.memory_bytes)
    integrality = np.ones(size)
    integrality[excess] = 0
    # microseconds: HiGHS's absolute gap tolerance (1e-6) would otherwise be a sizeable share of a millisecond
    result = solve(objective * 1e6, constraints=LinearConstraint(np.array(rows), lower, upper), integrality=integrality,
                   bounds=Bounds(np.zeros(size), np.r_[np.ones(size - 1), np.inf]), options={"mip_rel_gap": 1e-9})
    if not result.success:
        return all_cpu(problem)
    chosen = result.x
    return tuple(max(options[i], key=lambda t: chosen[x[i, t]]) for i in range(n))


class Oracle(PlacementPolicy):
    """The reference: the fastest placement whose measured accuracy keeps the floor.

    Exhaustive (every distinct precision tuple measured) when the placements number at most `exhaustive_up_to`;
    otherwise the exact MILP optimum over the proxy at `grid` budgets, every one measured."""

    name = "oracle"

    def __init__(self, exhaustive_up_to: int = 4096, grid: int = 24):
        self.exhaustive_up_to, self.grid = exhaustive_up_to, grid

    def candidates(self, problem: PlacementProblem) -> list[Targets]:
        if self.exhaustive(problem):
            return [tuple(p) for p in itertools.product(*(problem.targets_of(i) for i in range(problem.num_units)))]
        smallest, high = proxy_range(problem)
        budgets = [0.0] + list(np.geomspace(smallest / 2, high, self.grid)) if smallest else [0.0]
        return [milp(problem, b) for b in budgets]

    def exhaustive(self, problem: PlacementProblem) -> bool:
        return np.prod([len(problem.targets_of(i)) for i in range(problem.num_units)], dtype=float) \
            <= self.exhaustive_up_to

    def place(self, problem: PlacementProblem) -> Placement:
        return as_placement(self.name, fastest_feasible(problem, self.candidates(problem)))


def baseline_policies() -> list[PlacementPolicy]:
    return [AllCpu(), AllAccelerator(), MlmpMinTime(), MlmpMaxAccuracy()]
