"""Expert selection under an energy and a latency budget: MoE²'s discrete monotonic optimization and baselines.

The problem (per category): choose a subset S of experts maximising quality Q(S) subject to
sum_{k in S} e_k <= E (energy adds up: every chosen expert runs) and max_{k in S} l_k <= L (they run in parallel,
the slowest decides). Q, the energy sum and the latency max are all monotone non-decreasing in S, so the feasible
set is a normal (down-closed) set of the subset lattice and the problem is a discrete monotonic optimization
(Tuy, "Monotonic optimization", SIAM J. Optim. 11(2), 2000; MoE² arXiv 2501.09410 solves it the same way).

`dmo` is a best-first branch and bound over the lattice with polyblock upper bounds: a node fixes a set I of
chosen experts and leaves free ones; its polyblock vertex V is I plus every free expert that fits next to I on
its own. Q(V) bounds Q on every feasible set of the node (monotonicity), so a node whose bound cannot beat the
incumbent is cut, and a node whose vertex is itself feasible is solved by it. Ties in Q are broken towards less
energy, exactly as `exhaustive` breaks them, so on a monotone Q both return the same value (and subset).
If Q is not exactly monotone the bound can cut an optimum; `dmo(..., repair=True)` then improves its answer with
local moves (drop or add one expert while that improves Q). The scenario avoids the issue by selecting on a
quality that is monotone by construction (see `moe2.Scorer`).
"""
from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgepool.errors import SpecError

Quality = Callable[[tuple[int, ...]], float]


@dataclass
class Problem:
    """Per-expert energy (J) and latency (s), the two budgets, and the quality of a subset (a sorted tuple)."""

    energy: np.ndarray  # [K]
    latency: np.ndarray  # [K]
    energy_budget: float
    latency_budget: float
    quality: Quality

    def __post_init__(self):
        self.energy, self.latency = np.asarray(self.energy, float), np.asarray(self.latency, float)
        if self.energy.shape != self.latency.shape or self.energy.ndim != 1:
            raise SpecError("problem.energy", self.energy.shape, "energy and latency as [K] arrays of one length")
        if np.any(self.energy < 0) or np.any(self.latency < 0):
            raise SpecError("problem.energy", "negative", "non-negative energy and latency per expert")

    def feasible(self, subset: tuple[int, ...]) -> bool:
        idx = list(subset)
        return bool(self.energy[idx].sum() <= self.energy_budget and
                    (not idx or self.latency[idx].max() <= self.latency_budget))


@dataclass
class Selection:
    subset: tuple[int, ...]
    value: float
    energy: float
    latency: float
    evaluations: int  # calls of Q
    seconds: float
    extra: dict = field(default_factory=dict)


def _counted(problem: Problem) -> tuple[Quality, list[int]]:
    calls = [0]

    def q(subset: tuple[int, ...]) -> float:
        calls[0] += 1
        return problem.quality(subset)
    return q, calls


def _selection(problem: Problem, subset: tuple[int, ...], value: float, calls: int, start: float) -> Selection:
    idx = list(subset)
    return Selection(subset=tuple(sorted(subset)), value=float(value), energy=float(problem.energy[idx].sum()),
                     latency=float(problem.latency[idx].max()) if idx else 0.0, evaluations=calls,
                     seconds=time.perf_counter() - start)


def _better(value: float, energy: float, best_value: float, best_energy: float) -> bool:
    """Lexicographic (higher Q, then less energy): the one order every search here uses."""
    return value > best_value or (value == best_value and energy < best_energy)


def exhaustive(problem: Problem) -> Selection:
    """All 2^K subsets: feasibility of every mask at once, then Q on each feasible one."""
    start = time.perf_counter()
    q, calls = _counted(problem)
    k = len(problem.energy)
    bits = (np.arange(1 << k)[:, None] >> np.arange(k)) & 1  # [2^K, K]
    energy = bits @ problem.energy
    latency = (bits * problem.latency).max(1)
    best, best_value, best_energy = (), q(()), 0.0
    for mask in np.flatnonzero((energy <= problem.energy_budget) & (latency <= problem.latency_budget)):
        if mask == 0:
            continue
        subset = tuple(np.flatnonzero(bits[mask]).tolist())
        value = q(subset)
        if _better(value, float(energy[mask]), best_value, best_energy):
            best, best_value, best_energy = subset, value, float(energy[mask])
    return _selection(problem, best, best_value, calls[0], start)


def dmo(problem: Problem, repair: bool = False) -> Selection:
    """Discrete monotonic optimization: best-first branch and bound with polyblock vertices as upper bounds,
    then (`repair`) local moves that only matter where Q is not monotone."""
    start = time.perf_counter()
    q, calls = _counted(problem)
    memo: dict[tuple[int, ...], float] = {}

    def value(subset: tuple[int, ...]) -> float:
        key = tuple(sorted(subset))
        if key not in memo:
            memo[key] = q(key)
        return memo[key]

    e, budget = problem.energy, problem.energy_budget
    # experts too slow for the latency budget can never be chosen; branch on the costliest first
    order = sorted((i for i in range(len(e)) if problem.latency[i] <= problem.latency_budget),
                   key=lambda i: (-e[i], i))
    best, best_value, best_energy = (), value(()), 0.0
    tie = itertools.count(0, -1)  # among equal bounds the newest node first: dive to an incumbent early

    def vertex(chosen: tuple[int, ...], used: float, pos: int) -> tuple[int, ...]:
        return chosen + tuple(i for i in order[pos:] if used + e[i] <= budget)

    root = vertex((), 0.0, 0)
    heap = [(-value(root), next(tie), (), 0.0, 0, root)]
    while heap:
        neg_ub, _, chosen, used, pos, top = heapq.heappop(heap)
        ub = -neg_ub
        if not _better(ub, used, best_value, best_energy):
            continue  # nothing in this node beats the incumbent (Q <= ub, energy >= used)
        top_energy = float(e[list(top)].sum())
        if top_energy <= budget and _better(ub, top_energy, best_value, best_energy):
            best, best_value, best_energy = top, ub, top_energy
        if top_energy <= budget and not _better(ub, used, best_value, best_energy):
            continue  # solved: its best set is the vertex, and no cheaper set can tie it
        free = [i for i in top if i not in chosen]
        if not free:
            continue
        k = free[0]
        pos_k = order.index(k) + 1
        for child, child_used in ((chosen + (k,), used + e[k]), (chosen, used)):
            child_top = vertex(child, child_used, pos_k)
            child_ub = value(child_top)
            if _better(child_ub, child_used, best_value, best_energy):
                heapq.heappush(heap, (-child_ub, next(tie), child, child_used, pos_k, child_top))
    if repair:
        best, best_value = _repair(problem, value, tuple(sorted(best)), best_value)
    return _selection(problem, best, best_value, calls[0], start)


def _repair(problem: Problem, value: Quality, subset: tuple[int, ...], current: float) -> tuple[tuple, float]:
    """Local moves (drop one expert, add one that fits) while one improves (higher Q, or equal Q for less
    energy): where Q is monotone the branch and bound's answer is already optimal and nothing moves; where a
    learned gate breaks monotonicity, a set one step away can beat it."""
    e = problem.energy
    while True:
        energy = float(e[list(subset)].sum())
        moves = [tuple(i for i in subset if i != j) for j in subset]
        moves += [tuple(sorted(subset + (j,))) for j in range(len(e)) if j not in subset]
        best_move, best_value, best_energy = None, current, energy
        for move in moves:
            if move and problem.feasible(move):
                v, en = value(move), float(e[list(move)].sum())
                if _better(v, en, best_value, best_energy):
                    best_move, best_value, best_energy = move, v, en
        if best_move is None:
            return subset, current
        subset, current = best_move, best_value


def greedy(problem: Problem) -> Selection:
    """Add the feasible expert with the largest marginal quality per joule while that gain is positive."""
    start = time.perf_counter()
    q, calls = _counted(problem)
    chosen: tuple[int, ...] = ()
    current = q(chosen)
    while True:
        best, best_gain, best_value = None, 0.0, current
        for i in range(len(problem.energy)):
            if i in chosen or not problem.feasible(tuple(sorted(chosen + (i,)))):
                continue
            v = q(tuple(sorted(chosen + (i,))))
            gain = (v - current) / max(problem.energy[i], 1e-12)
            if gain > best_gain:
                best, best_gain, best_value = i, gain, v
        if best is None:
            return _selection(problem, chosen, current, calls[0], start)
        chosen, current = tuple(sorted(chosen + (best,))), best_value


def random_feasible(problem: Problem, rng: np.random.Generator) -> Selection:
    """A random maximal feasible subset: experts in a random order, each kept if it still fits."""
    start = time.perf_counter()
    q, calls = _counted(problem)
    chosen: tuple[int, ...] = ()
    for i in rng.permutation(len(problem.energy)).tolist():
        if problem.feasible(tuple(sorted(chosen + (i,)))):
            chosen = tuple(sorted(chosen + (i,)))
    return _selection(problem, chosen, q(chosen), calls[0], start)
