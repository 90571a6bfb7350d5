"""Energy as a planning objective, for every planner: its own search repeated over power modes and devices.

A planner searches stage cuts, groups, shares and micro-batches for throughput. Energy adds two choices it
does not make: which power mode each device runs in, and which devices to leave out (a slow device can cost
more joules than the samples it adds). `ObjectivePlanner` wraps any planner with them:

    candidates = { planner.plan(cluster in modes A, devices S) : S in subsets, A in modes reached from the
                   maximum by coordinate descent }

each replayed in the simulator for its throughput, energy per sample and average power, and one is chosen:

- `objective="energy"`: least energy per sample, among candidates at or above a throughput floor
  (`min_throughput` in samples/s, or `throughput_fraction` of the planner's own throughput plan; none: 0);
- `objective="throughput"` with `energy_per_sample_j` and/or `power_w` budgets: the highest throughput
  within them (none within: an infeasible plan that says the least either budget could be).

Subsets drop the device with the most joules per FLOP (at its most frugal mode) one at a time, and stop once
even the fastest modes miss the floor. Within a subset, every combination of modes is tried where there are
at most `EXHAUSTIVE_PLANS` (exact); otherwise modes start at each device's maximum and a sweep tries the
other modes of each device in turn, fastest first, re-plans (the planner re-cuts and re-shares for the new
speeds) and keeps a change that improves the score, for at most `MODE_SWEEPS` sweeps (a local optimum).
Under a throughput floor, a device's slower modes are not tried once one misses the floor.
Everything here is simulated with the roofline cost model and the catalog's power figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.plan import Plan
from edgepool.profile import ModelProfile

OBJECTIVES = ("throughput", "energy")
BUDGET_KEYS = ("min_throughput", "throughput_fraction", "energy_per_sample_j", "power_w", "search_power_modes")
MODE_SWEEPS = 2
EXHAUSTIVE_PLANS = 64  # mode combinations of one device subset tried one by one below this many


@dataclass
class Candidate:
    """One plan the energy search replayed: its simulated throughput, energy per sample and average power."""

    plan: Plan
    throughput: float  # samples/s (simulated; 0 when infeasible)
    energy_per_sample_j: float
    power_w: float  # average draw of the plan's devices over an iteration
    breakdown_j_per_sample: dict[str, float] = field(default_factory=dict)  # compute, idle, communication

    @property
    def feasible(self) -> bool:
        return self.plan.feasible and self.throughput > 0

    def summary(self) -> dict:
        return {"throughput": self.throughput, "energy_per_sample_j": self.energy_per_sample_j,
                "power_w": self.power_w, "devices": self.plan.devices, "power_modes": self.plan.power_modes,
                "breakdown_j_per_sample": self.breakdown_j_per_sample}


@dataclass(frozen=True)
class Budget:
    """What the caller asked: the objective, a throughput floor and energy/power caps."""

    objective: str = "throughput"
    min_throughput: float = 0.0
    throughput_fraction: float = 0.0
    energy_per_sample_j: float | None = None
    power_w: float | None = None
    search_power_modes: bool = True

    @property
    def searches(self) -> bool:
        """Whether the planner's plain throughput plan is not already the answer."""
        return self.objective == "energy" or self.energy_per_sample_j is not None or self.power_w is not None

    def violation(self, c: Candidate, floor: float) -> float:
        """How far a candidate misses the floor and caps (0: within all), relative to each."""
        if not c.feasible:
            return float("inf")
        miss = max(floor - c.throughput, 0.0) / max(floor, 1e-12)
        if self.energy_per_sample_j is not None:
            miss += max(c.energy_per_sample_j - self.energy_per_sample_j, 0.0) / self.energy_per_sample_j
        if self.power_w is not None:
            miss += max(c.power_w - self.power_w, 0.0) / self.power_w
        return miss

    def score(self, c: Candidate, floor: float) -> tuple:
        """Smaller is better: first within the budget, then the objective."""
        goal = c.energy_per_sample_j if self.objective == "energy" else -c.throughput
        return (self.violation(c, floor), goal)


def split_constraints(objective: str, constraints: dict | None) -> tuple[Budget, dict]:
    """The energy search's own keys as a `Budget`, and the rest for the wrapped planner."""
    if objective not in OBJECTIVES:
        raise SpecError(field="objective", value=objective, accepted=", ".join(OBJECTIVES))
    constraints = dict(constraints or {})
    own = {k: constraints.pop(k) for k in BUDGET_KEYS if k in constraints}
    for key in ("min_throughput", "energy_per_sample_j", "power_w"):
        value = own.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise SpecError(field=f"constraints.{key}", value=value, accepted="a positive number")
    fraction = own.get("throughput_fraction", 0.0)
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise SpecError(field="constraints.throughput_fraction", value=fraction, accepted="a number in 0..1")
    return Budget(objective=objective, **own), constraints


def evaluate(plan: Plan, profile: ModelProfile, cluster: Cluster, cost_model: CostModel) -> Candidate:
    """Replay a plan in the simulator (pure, no I/O) for its throughput and energy."""
    from edgepool.simulator import simulate  # the simulator sits above the planners; imported where used
    report = simulate(plan, cluster, cost_model, profile)
    m = report.metrics
    return Candidate(plan, report.throughput or 0.0, m["energy_j_per_sample"], m["average_power_w"],
                     dict(m["energy_breakdown_j_per_sample"]))


def joules_per_flop(cluster: Cluster, cost_model: CostModel, name: str) -> float:
    """A device's energy per FLOP at full load in its most frugal mode (idle power counted)."""
    device = cluster.devices[name]
    modes = device.power_modes or [None]
    return min(cost_model.power(device, 1.0, m) / cost_model.effective_flops(device, mode=m) for m in modes)


@dataclass
class EnergySearch:
    """The candidates of one planner on one problem; `run` fills `candidates` and returns the best."""

    inner: Any  # a Planner
    profile: ModelProfile
    cluster: Cluster
    cost_model: CostModel
    batch: int
    constraints: dict
    budget: Budget
    candidates: list[Candidate] = field(default_factory=list)
    floor: float = 0.0  # samples/s every candidate should reach: set by `run`
    _seen: dict = field(default_factory=dict)

    def run(self) -> Candidate:
        """The chosen candidate; the first of `candidates` is the planner's own throughput plan."""
        base = self._plan(self.devices(), {})
        floor = self.floor = max(self.budget.min_throughput, self.budget.throughput_fraction * base.throughput)
        best = base
        for subset in self.subsets():
            start = self._plan(subset, {})
            if len(subset) < len(self.devices()) and start.throughput < floor:
                break  # fewer devices only lose more throughput
            found = self.search_modes(subset, floor) if self.budget.search_power_modes else start
            if self.budget.score(found, floor) < self.budget.score(best, floor):
                best = found
        return best

    def devices(self) -> list[str]:
        return list(self.constraints.get("devices") or self.cluster.devices)

    def subsets(self):
        """Every device, then without the least efficient one, and so on down to one device."""
        order = sorted(self.devices(), key=lambda d: joules_per_flop(self.cluster, self.cost_model, d))
        for n in range(len(order), 0, -1):
            yield order[:n]

    def search_modes(self, subset: list[str], floor: float) -> Candidate:
        """Every combination of the subset's modes where there are at most `EXHAUSTIVE_PLANS` (exact), else
        coordinate descent."""
        choices = [[m.name for m in self.cluster.devices[d].power_modes] or [None] for d in subset]
        if math.prod(len(c) for c in choices) > EXHAUSTIVE_PLANS:
            return self.descend(subset, floor)
        combos = (self._plan(subset, {d: m for d, m in zip(subset, combo) if m}) for combo in product(*choices))
        return min(combos, key=lambda c: self.budget.score(c, floor))

    def descend(self, subset: list[str], floor: float) -> Candidate:
        """Coordinate descent over the subset's power modes from the maximum, re-planning at every step."""
        modes: dict[str, str] = {}
        current = self._plan(subset, modes)
        for _ in range(MODE_SWEEPS):
            improved = False
            for d in subset:
                for mode in self.cluster.devices[d].power_modes:  # fastest first
                    trial = {**modes, d: mode.name}
                    if trial == modes:
                        continue
                    c = self._plan(subset, trial)
                    if self.budget.score(c, floor) < self.budget.score(current, floor):
                        current, modes, improved = c, trial, True
                    elif self.budget.objective == "energy" and c.throughput < floor:
                        break  # slower modes of this device miss the floor by more
            if not improved:
                break
        return current

    def _plan(self, subset: list[str], modes: dict[str, str]) -> Candidate:
        effective = {d: m for d, m in {**self.cluster.power_modes, **modes}.items() if d in subset}
        key = (tuple(subset), tuple(sorted(effective.items())))
        if key not in self._seen:
            cluster = self.cluster.with_power_modes(modes)
            plan = self.inner.plan(self.profile, cluster, self.cost_model, self.batch, "throughput",
                                   {**self.constraints, "devices": list(subset)})
            candidate = evaluate(plan, self.profile, cluster, self.cost_model)
            self._seen[key] = candidate
            self.candidates.append(candidate)
        return self._seen[key]


class ObjectivePlanner:
    """Any planner, answering `objective="energy"` and energy/power budgets as well as throughput."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.last_search: EnergySearch | None = None  # the candidates of the last search (compare draws them)

    def __getattr__(self, attr):  # the wrapped planner's own settings (e.g. `proportional`)
        if attr == "inner":  # not set yet (a copy under construction)
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def plan(self, profile: ModelProfile, cluster: Cluster, cost_model: CostModel, batch: int,
             objective: str = "throughput", constraints: dict[str, Any] | None = None) -> Plan:
        budget, rest = split_constraints(objective, constraints)
        if not budget.searches:
            return self.inner.plan(profile, cluster, cost_model, batch, "throughput", rest)
        search = EnergySearch(self.inner, profile, cluster, cost_model, batch, rest, budget)
        chosen = search.run()
        self.last_search = search
        plan = chosen.plan.model_copy(deep=True)
        plan.notes = {**plan.notes, "objective": objective, "energy_per_sample_j": chosen.energy_per_sample_j,
                      "power_w": chosen.power_w, "throughput_floor": search.floor,
                      "candidates": len(search.candidates), "energy": "simulated (roofline cost model; modelled "
                                                                      "power of each device's mode)"}
        if budget.violation(chosen, search.floor) > 0:
            plan.feasible = False
            plan.infeasible_reason = _missed(budget, search.floor, search.candidates)
        return plan


def _missed(budget: Budget, floor: float, candidates: list[Candidate]) -> str:
    """Why no candidate meets the request, with the best each bound could be."""
    ok = [c for c in candidates if c.feasible]
    if not ok:
        return "no plan fits the devices' memory"
    parts = []
    if floor > 0:
        parts.append(f"throughput >= {floor:.3g} samples/s (best {max(c.throughput for c in ok):.3g})")
    if budget.energy_per_sample_j is not None:
        parts.append(f"energy <= {budget.energy_per_sample_j:.3g} J/sample "
                     f"(least {min(c.energy_per_sample_j for c in ok):.3g})")
    if budget.power_w is not None:
        parts.append(f"power <= {budget.power_w:.3g} W (least {min(c.power_w for c in ok):.3g})")
    return "no plan meets " + " and ".join(parts) + " together"
