"""Fulcrum: training and inference minibatches interleaved on one device, and the power-mode searches.

*Managed interleaving* runs one minibatch at a time: an inference batch when waiting requests would
otherwise miss the latency goal (or a full batch is waiting), a training minibatch when it fits before the
oldest request's deadline. `interleave_throughput` is its steady-state model per mode: a cycle of one
inference batch of b requests and k training minibatches must absorb the requests arriving during the cycle,
and a request arriving just after a batch starts waits a cycle plus its own batch.

The searches find the mode with the most training throughput within a power budget and the latency goal,
profiling as few modes as they can: GMD (gradient-based multi-dimensional descent, coarse to fine steps)
and ALS (active learning: a PowerTrain predictor transferred from a reference workload proposes the next
mode). Exhaustive search gives the optimum; random search of the same profiling budget is the baseline.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgepool.power.modes import Mode, ModeSpace
from edgepool.power.powertrain import Predictor, transfer


# ------------------------------------------------------------------------------------- steady-state model
@dataclass(frozen=True)
class Scenario:
    """A Fulcrum problem: requests per second, per-request latency goal, power budget, training batch."""

    arrival_rate: float
    latency_goal_s: float
    power_budget_w: float
    train_batch: int
    max_infer_batch: int = 16
    name: str = ""


def infer_time(t_b1: float, t_b8: float, batch: int) -> float:
    """Inference batch time, linear in batch size through the two profiled sizes (1 and 8)."""
    slope = max(t_b8 - t_b1, 0.0) / 7.0
    return t_b1 + slope * (batch - 1)


def interleave_throughput(t_train: float, t_b1: float, t_b8: float, s: Scenario) -> tuple[float, int, int]:
    """(training samples/s, inference batch b, training minibatches per cycle k); 0 throughput = infeasible."""
    best = (0.0, 0, 0)
    for b in range(1, s.max_infer_batch + 1):
        ti = infer_time(t_b1, t_b8, b)
        # cycle = ti + k t_train must hold <= b arrivals, and cycle + ti <= goal
        k_arrivals = (b / s.arrival_rate - ti) / t_train
        k_latency = (s.latency_goal_s - 2 * ti) / t_train
        k = math.floor(min(k_arrivals, k_latency) + 1e-9)
        if k < 1:
            continue
        throughput = k * s.train_batch / (ti + k * t_train)
        if throughput > best[0]:
            best = (throughput, b, k)
    return best


def throughput_array(t_train, t_b1, t_b8, power, s: Scenario) -> np.ndarray:
    """`interleave_throughput` for many modes at once (0 where over budget or infeasible)."""
    t_train, t_b1, t_b8, power = (np.asarray(a, float) for a in (t_train, t_b1, t_b8, power))
    best = np.zeros_like(t_train)
    slope = np.maximum(t_b8 - t_b1, 0.0) / 7.0
    for b in range(1, s.max_infer_batch + 1):
        ti = t_b1 + slope * (b - 1)
        k = np.floor(np.minimum((b / s.arrival_rate - ti) / t_train, (s.latency_goal_s - 2 * ti) / t_train) + 1e-9)
        value = np.where(k >= 1, k * s.train_batch / (ti + np.maximum(k, 1) * t_train), 0.0)
        best = np.maximum(best, value)
    return np.where(power <= s.power_budget_w, best, 0.0)


# ------------------------------------------------------------------------------------- profiling oracle
# What a mode's profile measures (`Measurement.times` keys): a training minibatch, an inference batch of 1
# and one of 8 (`infer_time` interpolates between the two inference sizes).
TRAIN, INFER_B1, INFER_B8 = "train", "infer_b1", "infer_b8"
QUANTITIES = (TRAIN, INFER_B1, INFER_B8)
SPEED_KEYS = (TRAIN, INFER_B8)  # GMD's speed of a mode: the rates of a training step and a full inference batch


@dataclass
class Measurement:
    times: dict[str, float]  # quantity (one of QUANTITIES) -> seconds
    power_w: float


class Oracle:
    """Profiles a mode (here: looks it up in measured or simulated tables) and counts distinct modes profiled."""

    def __init__(self, space: ModeSpace, table: dict[Mode, Measurement]):
        self.space, self.table, self.profiled = space, table, {}

    def __call__(self, mode: Mode) -> Measurement:
        mode = tuple(mode)
        if mode not in self.profiled:
            self.profiled[mode] = self.table[mode]
        return self.profiled[mode]

    @property
    def count(self) -> int:
        return len(self.profiled)


def simulated_tables(device_name: str, reference: str, train: str, infer: str, train_batch: int = 32
                     ) -> tuple[ModeSpace, dict[Mode, Measurement], Predictor]:
    """A Jetson's full mode grid simulated with Pagoda rooflines: the oracle table of a training and an
    inference workload, and a PowerTrain predictor pretrained on the reference workload's sweep."""
    from edgepool.catalog import get_device
    from edgepool.models import build_model
    from edgepool.power.modes import jetson_mode_space
    from edgepool.power.power_model import power_model_for
    from edgepool.power.powertrain import fit_predictor
    from edgepool.power.roofline import layer_work, rooflines, sweep
    from edgepool.profile import profile_model

    space = jetson_mode_space(device_name)
    roof = rooflines(space, get_device(device_name), power_model_for(space))
    profiles = {n: profile_model(build_model(n, meta=True), batch=1) for n in {reference, train, infer}}
    ref = sweep(layer_work(profiles[reference], train_batch, "train"), roof, train_batch)
    tr = sweep(layer_work(profiles[train], train_batch, "train"), roof, train_batch)
    b1 = sweep(layer_work(profiles[infer], 1, "infer"), roof, 1)
    b8 = sweep(layer_work(profiles[infer], 8, "infer"), roof, 8)
    table = {m: Measurement({TRAIN: float(tr.time_s[i]), INFER_B1: float(b1.time_s[i]),
                             INFER_B8: float(b8.time_s[i])}, float(max(tr.power_w[i], b8.power_w[i])))
             for i, m in enumerate(roof.modes)}
    return space, table, fit_predictor(space, roof.modes, ref.time_s, ref.power_w)


def objective(m: Measurement, s: Scenario) -> float:
    """Training throughput if the mode fits the power budget and the latency goal, else 0."""
    if m.power_w > s.power_budget_w:
        return 0.0
    return interleave_throughput(m.times[TRAIN], m.times[INFER_B1], m.times[INFER_B8], s)[0]


@dataclass
class SearchResult:
    method: str
    mode: Mode | None
    throughput: float
    profiled: int
    trace: list = field(default_factory=list)


def _best_profiled(oracle: Oracle, s: Scenario, method: str) -> SearchResult:
    best, best_value = None, 0.0
    for mode, m in oracle.profiled.items():
        value = objective(m, s)
        if value > best_value:
            best, best_value = mode, value
    return SearchResult(method, best, best_value, oracle.count)


def exhaustive_search(oracle: Oracle, s: Scenario) -> SearchResult:
    for mode in oracle.space.modes():
        oracle(mode)
    return _best_profiled(oracle, s, "exhaustive")


def random_search(oracle: Oracle, s: Scenario, budget: int, seed: int = 0) -> SearchResult:
    modes = oracle.space.modes()
    for mode in random.Random(seed).sample(modes, min(budget, len(modes))):
        oracle(mode)
    return _best_profiled(oracle, s, "random")


# How `gmd_search` ranks a move. Gains from different situations share one scale; these finite tiers (not
# math.inf) keep moves within a tier ordered by their own value, exactly as the search was tuned.
FEASIBLE_BONUS = 1e9  # added to a move from an infeasible mode to a feasible one: outranks every other move
INFEASIBLE_GAIN = -1e9  # a move that stays or goes over the budget scores this minus its watts (less is better)
PLATEAU_WEIGHT = 1e-6  # on a throughput plateau a faster mode still gains, but less than any real gain


def gmd_search(oracle: Oracle, s: Scenario, budget: int | None = None,
               speed_keys: tuple[str, ...] = SPEED_KEYS) -> SearchResult:
    """Gradient-based multi-dimensional descent from the fastest mode.

    Over the power budget (or missing the latency goal) it probes one step down each dimension and follows
    the one that saves the most power per unit of throughput lost; within them it probes the neighbours and
    follows the steepest throughput gain. It keeps stepping along a chosen direction while that helps (a line
    search: one probe per step), prunes modes at or above an over-budget mode in every dimension (power
    grows with every knob), starts with steps of a quarter of each dimension and halves them when stuck;
    stuck at single steps, it tries trading one knob down for another up. It then restarts from each of
    the device's presets (nvpmodel modes) while profiling budget remains, keeping the best mode found.
    `speed_keys` are the measured times (`Measurement.times` keys) whose rates measure a mode's speed.
    """
    descent = _Descent(oracle, s, budget or oracle.space.size, speed_keys)
    for start in _start_modes(oracle.space):
        descent.descend_from(start)
    result = _best_profiled(oracle, s, "gmd")
    result.trace = descent.trace
    return result


def _start_modes(space: ModeSpace) -> list[Mode]:
    """The fastest mode, then the device's presets."""
    return [space.max_mode()] + [m for m in space.presets.values() if m != space.max_mode()]


Move = tuple[tuple[int, int], ...]  # (dimension, direction) pairs, taken together


class _Descent:
    """The state of one GMD search: step sizes, modes found over budget (for pruning) and the trace."""

    def __init__(self, oracle: Oracle, s: Scenario, budget: int, speed_keys: tuple[str, ...]):
        self.oracle, self.s, self.budget, self.speed_keys = oracle, s, budget, speed_keys
        self.space = oracle.space
        self.sizes = [len(v) for v in self.space.dims.values()]
        self.steps = self._initial_steps()
        self.over: list[tuple[int, ...]] = []  # indices of modes found over the power budget
        self.trace: list[Mode] = []

    def _initial_steps(self) -> list[int]:
        return [max(1, n // 4) for n in self.sizes]

    def over_budget(self, m: Measurement) -> bool:
        return m.power_w > self.s.power_budget_w

    def pruned(self, mode: Mode) -> bool:
        idx = self.space.index(mode)
        return any(all(i >= j for i, j in zip(idx, o)) for o in self.over)

    def probe(self, mode: Mode) -> Measurement | None:
        """Profile `mode` unless the budget is spent or it is pruned (modes already profiled are free)."""
        if mode not in self.oracle.profiled and (self.oracle.count >= self.budget or self.pruned(mode)):
            return None
        m = self.oracle(mode)
        if self.over_budget(m):
            self.over.append(self.space.index(mode))
        return m

    def moved(self, mode: Mode, move: Move) -> Mode | None:
        """`mode` moved by the current steps, or None where a dimension is already at its end."""
        idx = list(self.space.index(mode))
        for d, direction in move:
            j = min(max(idx[d] + direction * self.steps[d], 0), self.sizes[d] - 1)
            if j == idx[d]:
                return None
            idx[d] = j
        return self.space.at(tuple(idx))

    def speed(self, m: Measurement) -> float:
        return sum(1.0 / m.times[key] for key in self.speed_keys)

    def gain(self, here: Measurement, there: Measurement) -> float:
        """How good a move is: feasible first, then throughput. Over the power budget: watts saved times
        the speed kept; within it but missing the latency goal: speed gained."""
        value_here, value_there = objective(here, self.s), objective(there, self.s)
        if value_here > 0 and value_there == value_here:  # a plateau (whole minibatches per cycle): go faster
            return PLATEAU_WEIGHT * (self.speed(there) / self.speed(here) - 1.0)
        if value_there > 0 or value_here > 0:
            return value_there - value_here + (FEASIBLE_BONUS if value_here <= 0 else 0)
        if self.over_budget(here):
            saved = here.power_w - there.power_w
            return saved * self.speed(there) / self.speed(here) if saved > 0 else INFEASIBLE_GAIN - there.power_w
        if self.over_budget(there):
            return INFEASIBLE_GAIN - there.power_w
        return (self.speed(there) - self.speed(here)) / self.speed(here)

    def descend_from(self, current: Mode) -> None:
        """Descend from `current` until no move helps at single steps or the profiling budget is spent."""
        self.steps = self._initial_steps()
        self.trace.append(current)
        here = self.probe(current)
        swaps = False  # when single steps are stuck: trade one knob down for another up
        while here is not None:
            over_power = self.over_budget(here)
            good = self.good_moves(current, here, over_power, swaps)
            if not good:
                if not swaps and not over_power:
                    swaps = True
                    continue
                swaps = False
                if not self.refine_steps():
                    break
                continue
            swaps = False
            _, move, current, here = max(good, key=lambda o: o[0])
            self.trace.append(current)
            current, here = self.line_search(current, here, move)

    def candidate_moves(self, over_power: bool, swaps: bool) -> list[Move]:
        dims = range(len(self.sizes))
        if swaps:
            return [((d, -1), (e, 1)) for d in dims for e in dims if d != e]
        return [((d, -1),) for d in dims] + ([] if over_power else [((d, 1),) for d in dims])

    def good_moves(self, current: Mode, here: Measurement, over_power: bool, swaps: bool
                   ) -> list[tuple[float, Move, Mode, Measurement]]:
        """(gain, move, target, measurement) of each candidate move that helps, in candidate order."""
        options = []
        for move in self.candidate_moves(over_power, swaps):
            target = self.moved(current, move)
            m = self.probe(target) if target is not None and target not in self.trace else None
            if m is not None:
                options.append((self.gain(here, m), move, target, m))
        floor = INFEASIBLE_GAIN if over_power else 0
        return [o for o in options if o[0] > floor]

    def refine_steps(self) -> bool:
        """Halve the steps; False when they are all single steps already or the budget is spent."""
        if all(step == 1 for step in self.steps) or self.oracle.count >= self.budget:
            return False
        self.steps = [max(1, step // 2) for step in self.steps]
        return True

    def line_search(self, current: Mode, here: Measurement, move: Move) -> tuple[Mode, Measurement]:
        """Keep stepping along `move` while it helps; where the budget's edge is crossed, bisect back to it."""
        s = self.s
        while True:
            target = self.moved(current, move)
            m = self.probe(target) if target is not None else None
            if m is None or self.gain(here, m) <= 0 or (objective(here, s) > 0 and objective(m, s) <= 0):
                return current, here
            crossed = here.power_w > s.power_budget_w >= m.power_w
            previous, current, here = current, target, m
            self.trace.append(current)
            if crossed and len(move) == 1:
                return self.bisect(previous, current, here, move[0][0])

    def bisect(self, over_mode: Mode, ok_mode: Mode, ok: Measurement, d: int) -> tuple[Mode, Measurement]:
        """The best feasible mode along dimension `d` between an over-budget mode and a feasible one."""
        hi, lo = self.space.index(over_mode)[d], self.space.index(ok_mode)[d]
        while abs(hi - lo) > 1:
            idx = list(self.space.index(ok_mode))
            idx[d] = (hi + lo) // 2
            mode = self.space.at(tuple(idx))
            m = self.probe(mode)
            if m is None:
                break
            self.trace.append(mode)
            if self.over_budget(m) or objective(m, self.s) < objective(ok, self.s):
                hi = idx[d]
            else:
                lo, ok_mode, ok = idx[d], mode, m
        return ok_mode, ok


def als_search(oracle: Oracle, s: Scenario, pretrained: Predictor, budget: int, initial: int = 4,
               seed: int = 0) -> SearchResult:
    """Active-learning search: transfer `pretrained` to each profiled quantity (train and inference time,
    power) from the modes profiled so far, predict every mode's objective, profile the best unprofiled one."""
    space = oracle.space
    modes = space.modes()
    rng = random.Random(seed)
    initial = max(1, min(initial, budget))
    for mode in [space.max_mode()] + rng.sample(modes, initial - 1):
        oracle(mode)
    while oracle.count < budget:
        seen = list(oracle.profiled)
        quantities = {}
        for key in QUANTITIES:
            values = [oracle.profiled[m].times[key] for m in seen]
            powers = [oracle.profiled[m].power_w for m in seen]
            quantities[key], quantities["power"] = transfer(pretrained, seen, values, powers).predict(modes)
        predicted = throughput_array(quantities[TRAIN], quantities[INFER_B1], quantities[INFER_B8],
                                     quantities["power"], s)
        predicted[[i for i, mode in enumerate(modes) if mode in oracle.profiled]] = 0.0
        best = modes[int(np.argmax(predicted))] if predicted.max() > 0 else None
        if best is None:
            break
        oracle(best)
    return _best_profiled(oracle, s, "als")


# ------------------------------------------------------------------------------------- real interleaving
SAFETY = 0.85  # managed interleaving plans to finish a request by this share of its goal (step times vary)


@dataclass
class InterleaveReport:
    """What one interleaved run measured (real, on this host)."""

    policy: str
    duration_s: float
    train_steps: int
    train_throughput: float  # samples/s
    requests: int
    latencies_s: list[float]
    goal_s: float

    @property
    def p95_s(self) -> float:
        return float(np.percentile(self.latencies_s, 95)) if self.latencies_s else 0.0

    @property
    def goal_met(self) -> float:
        if not self.latencies_s:
            return 1.0
        return float(np.mean(np.asarray(self.latencies_s) <= self.goal_s))

    def to_dict(self) -> dict:
        return {"policy": self.policy, "source": "measured", "duration_s": round(self.duration_s, 3),
                "train_steps": self.train_steps, "train_throughput": self.train_throughput,
                "requests": self.requests, "p95_latency_s": self.p95_s, "goal_s": self.goal_s,
                "fraction_within_goal": self.goal_met}


def run_interleaved(train_step: Callable[[], None], infer: Callable[[int], None], train_batch: int,
                    arrival_rate: float, latency_goal_s: float, duration_s: float, max_infer_batch: int = 8,
                    managed: bool = True, seed: int = 0) -> InterleaveReport:
    """Run training and inference minibatches on this device, one at a time, for `duration_s`.

    Requests arrive as a Poisson process. `managed=True` is Fulcrum's policy (serve before a deadline would
    be missed, train only when a minibatch fits before the oldest deadline); `managed=False` is the naive
    alternation baseline (one training minibatch, then everything waiting).
    """
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, int(arrival_rate * duration_s * 2) + 8))
    arrivals = arrivals[arrivals < duration_s]
    est_train, est_infer = _estimate(train_step), _estimate(lambda: infer(1))
    latencies, served, steps = [], 0, 0
    start = time.perf_counter()
    while True:
        now = time.perf_counter() - start
        if now >= duration_s and served >= len(arrivals):
            break
        waiting = int(np.searchsorted(arrivals, now, side="right")) - served
        if waiting > 0:
            oldest_wait = now - arrivals[served]
            must_serve = (not managed) or now >= duration_s or waiting >= max_infer_batch or (
                oldest_wait + est_train + 2 * est_infer > SAFETY * latency_goal_s)
        else:
            must_serve = False
        if waiting > 0 and must_serve:
            batch = min(waiting, max_infer_batch)
            t0 = time.perf_counter()
            infer(batch)
            est_infer = 0.8 * est_infer + 0.2 * (time.perf_counter() - t0)
            done = time.perf_counter() - start
            latencies += [done - a for a in arrivals[served:served + batch]]
            served += batch
        elif now < duration_s:
            t0 = time.perf_counter()
            train_step()
            est_train = 0.8 * est_train + 0.2 * (time.perf_counter() - t0)
            steps += 1
        else:
            time.sleep(max(0.0, min(arrivals[served] - now, 0.01)) if served < len(arrivals) else 0)
    elapsed = time.perf_counter() - start
    return InterleaveReport("managed" if managed else "naive", elapsed, steps, steps * train_batch / elapsed,
                            len(arrivals), latencies, latency_goal_s)


def _estimate(fn: Callable[[], None], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
