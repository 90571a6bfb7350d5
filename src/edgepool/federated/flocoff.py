"""FlocOff (arXiv 2405.18739): user devices offload part of their skewed data to edge servers.

The edge servers then run federated learning on what they received, so the data each server
trains on should look like the global label distribution. Two subproblems, solved in turn:

- MKL-CO: which server each device sends to and how much, minimising the servers' KL divergence
  to the global label distribution (an assignment problem: exhaustive when small, else greedy plus
  local search with restarts).
- MCC-RA: how a server's uplink band is shared (OFDMA) so that every device meets the offload
  deadline with the least transmit energy (convex; derivative water-filling with scipy's brentq).

Every figure here is modelled (label counts, a path-loss channel, Shannon rates), not measured.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from edgepool.errors import SpecError

MNIST_SAMPLE_BYTES = 28 * 28 + 1  # uint8 pixels + a one-byte label
DEFAULT_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
KL_EPS = 1e-9  # added to every probability (then renormalised) so empty classes give finite KL
TIE_BREAK = 1e-4  # lambda: prefer more offloaded data only between plans this close in KL
SHORTFALL_PENALTY = 1e3  # per sample a server lacks below min_server_samples (dominates any KL)
BRUTE_FORCE_LIMIT = 200_000  # largest number of (server, level) combinations brute_force enumerates
NOISE_W_PER_HZ = 10 ** (-174 / 10) / 1000  # N0 = -174 dBm/Hz


# ----------------------------------------------------------------------------- MKL-CO


@dataclass
class OffloadProblem:
    """Who can send what where. Checked and normalised on construction.

    A device i sending at level f to server j sends round(f * min(n_i, cap[i, j])) samples, a
    stratified sample that keeps the device's label mix (largest-remainder rounding per class).
    Plans in which a server receives fewer than `min_server_samples` are infeasible (penalised by
    SHORTFALL_PENALTY per missing sample, so the search can cross them but never prefers them).
    """

    counts: np.ndarray  # [N, C] samples per class on each device
    reachable: np.ndarray  # [N, M] bool: device i has a link to server j
    cap: np.ndarray  # [N, M] most samples device i can send to server j within the deadline
    p: np.ndarray | None = None  # [C] global label distribution; default: normalised total counts
    levels: tuple[float, ...] = DEFAULT_LEVELS
    min_server_samples: int = 1
    tie_break: float = TIE_BREAK

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts)
        if self.counts.ndim != 2 or not np.issubdtype(self.counts.dtype, np.integer) or (self.counts < 0).any():
            raise SpecError(field="counts", value=f"shape {self.counts.shape}",
                            accepted="a [devices, classes] array of non-negative integers")
        n, c = self.counts.shape
        self.reachable = np.asarray(self.reachable, dtype=bool)
        if self.reachable.ndim != 2 or self.reachable.shape[0] != n:
            raise SpecError(field="reachable", value=f"shape {self.reachable.shape}", accepted=f"shape [{n}, servers]")
        m = self.reachable.shape[1]
        lonely = np.flatnonzero(~self.reachable.any(axis=1))
        if len(lonely):
            raise SpecError(field="reachable", value=f"devices {lonely.tolist()} reach no server",
                            accepted="every device reaches at least one server")
        self.cap = np.asarray(self.cap)
        if self.cap.shape != (n, m) or (self.cap < 0).any():
            raise SpecError(field="cap", value=f"shape {self.cap.shape}", accepted=f"shape [{n}, {m}], values >= 0")
        total = self.counts.sum(axis=0)
        p = total if self.p is None else np.asarray(self.p, dtype=float)
        if p.shape != (c,) or (p < 0).any() or p.sum() <= 0:
            raise SpecError(field="p", value=self.p, accepted=f"{c} non-negative weights with a positive sum")
        self.p = p / p.sum()
        if not self.levels or any(not 0 <= f <= 1 for f in self.levels):
            raise SpecError(field="levels", value=self.levels, accepted="a non-empty tuple of fractions in [0, 1]")
        if self.min_server_samples < 1:
            raise SpecError(field="min_server_samples", value=self.min_server_samples,
                            accepted="an integer >= 1 (every server trains on something)")
        if self.tie_break < 0:
            raise SpecError(field="tie_break", value=self.tie_break, accepted="a number >= 0")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(devices N, servers M, classes C)."""
        return self.counts.shape[0], self.reachable.shape[1], self.counts.shape[1]


@dataclass
class OffloadPlan:
    """An MKL-CO decision and its modelled quality."""

    server: np.ndarray  # [N] the server each device sends to
    fraction: np.ndarray  # [N] the chosen level f_i
    sent: np.ndarray  # [N, C] samples per class each device sends
    server_counts: np.ndarray  # [M, C] what each server receives
    objective: float  # weighted KL + tie-break (+ shortfall penalty when infeasible)
    kl_before: float  # devices' own KL to p, weighted by device size (the raw split)
    kl_after: float  # servers' KL to p, weighted by received size
    kl_reduction_fraction: float  # 1 - after / before
    offloaded: np.ndarray  # [N] samples each device sends
    feasible: bool  # every server got >= min_server_samples
    solver: str


def offload_caps(bandwidth_bps: np.ndarray, deadline_s: float,
                 bytes_per_sample: int = MNIST_SAMPLE_BYTES) -> np.ndarray:
    """Most whole samples each link carries within the deadline: floor(bw * T / (8 * bytes)). [N, M]."""
    bandwidth_bps = np.asarray(bandwidth_bps, dtype=float)
    if (bandwidth_bps < 0).any() or deadline_s <= 0 or bytes_per_sample <= 0:
        raise SpecError(field="bandwidth_bps/deadline_s/bytes_per_sample",
                        value=(bandwidth_bps.min(), deadline_s, bytes_per_sample),
                        accepted="bandwidths >= 0 bit/s, a deadline > 0 s, bytes per sample > 0")
    return np.floor(bandwidth_bps * deadline_s / (8 * bytes_per_sample)).astype(np.int64)


def offload_problem_from_links(counts: np.ndarray, bandwidth_bps: np.ndarray, deadline_s: float,
                               bytes_per_sample: int = MNIST_SAMPLE_BYTES, **options) -> OffloadProblem:
    """An OffloadProblem whose links are those with bandwidth > 0 and caps from `offload_caps`."""
    bandwidth_bps = np.asarray(bandwidth_bps, dtype=float)
    return OffloadProblem(counts=counts, reachable=bandwidth_bps > 0,
                          cap=offload_caps(bandwidth_bps, deadline_s, bytes_per_sample), **options)


def stratified_counts(counts: np.ndarray, total: int) -> np.ndarray:
    """`total` samples split over classes in proportion to `counts` [C], largest remainder first."""
    n = counts.sum()
    if n == 0 or total == 0:
        return np.zeros_like(counts)
    quota = total * counts / n
    taken = np.floor(quota).astype(counts.dtype)
    order = np.argsort(-(quota - taken), kind="stable")
    taken[order[:total - taken.sum()]] += 1
    return taken


@dataclass
class _Choices:
    """Every (server, level) a device may pick, with what it then sends."""

    server: list[np.ndarray] = field(default_factory=list)  # per device: [K_i]
    level: list[np.ndarray] = field(default_factory=list)  # per device: [K_i] index into levels
    sent: list[np.ndarray] = field(default_factory=list)  # per device: [K_i, C]


def _choices(problem: OffloadProblem) -> _Choices:
    choices = _Choices()
    n = problem.counts.sum(axis=1)
    for i in range(problem.shape[0]):
        pairs = [(j, l) for j in np.flatnonzero(problem.reachable[i]) for l in range(len(problem.levels))]
        choices.server.append(np.array([j for j, _ in pairs]))
        choices.level.append(np.array([l for _, l in pairs]))
        choices.sent.append(np.stack([
            stratified_counts(problem.counts[i], int(round(problem.levels[l] * min(n[i], problem.cap[i, j]))))
            for j, l in pairs]))
    return choices


def _kl(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """KL(q || p) over the last axis, both smoothed by KL_EPS; rows of q may be unnormalised or zero."""
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1) + KL_EPS
    q = q / q.sum(axis=-1, keepdims=True)
    p = (p + KL_EPS) / (p + KL_EPS).sum()
    return (q * np.log(q / p)).sum(axis=-1)


def _objective(problem: OffloadProblem, q: np.ndarray) -> np.ndarray:
    """Penalised objective of server counts q [..., M, C] -> [...]."""
    size = q.sum(axis=-1)  # [..., M]
    total = size.sum(axis=-1)  # [...]
    weighted = (size * _kl(q, problem.p)).sum(axis=-1) / np.maximum(total, 1)
    shortfall = np.maximum(problem.min_server_samples - size, 0).sum(axis=-1)
    return weighted + problem.tie_break * (1 - total / problem.counts.sum()) + SHORTFALL_PENALTY * shortfall


def _plan(problem: OffloadProblem, choices: _Choices, pick: np.ndarray, solver: str) -> OffloadPlan:
    """The OffloadPlan for one chosen index per device."""
    n_dev, m, c = problem.shape
    server = np.array([choices.server[i][k] for i, k in enumerate(pick)])
    sent = np.stack([choices.sent[i][k] for i, k in enumerate(pick)])  # [N, C]
    q = np.zeros((m, c), dtype=np.int64)
    np.add.at(q, server, sent)
    size, dev_size = q.sum(axis=1), problem.counts.sum(axis=1)
    before = float((dev_size * _kl(problem.counts, problem.p)).sum() / dev_size.sum())
    after = float((size * _kl(q, problem.p)).sum() / max(size.sum(), 1))
    return OffloadPlan(
        server=server, fraction=np.array([problem.levels[choices.level[i][k]] for i, k in enumerate(pick)]),
        sent=sent, server_counts=q, objective=float(_objective(problem, q.astype(float))),
        kl_before=before, kl_after=after, kl_reduction_fraction=1 - after / before if before > 0 else 0.0,
        offloaded=sent.sum(axis=1), feasible=bool((size >= problem.min_server_samples).all()), solver=solver)


def _space(choices: _Choices) -> int:
    return math.prod(len(s) for s in choices.server)


def brute_force(problem: OffloadProblem, chunk: int = 20_000) -> OffloadPlan:
    """The exact optimum by trying every (server, level) per device; refuses above BRUTE_FORCE_LIMIT."""
    choices = _choices(problem)
    space, (n_dev, m, c) = _space(choices), problem.shape
    if space > BRUTE_FORCE_LIMIT:
        raise SpecError(field="problem size", value=f"{space:,} combinations",
                        accepted=f"at most {BRUTE_FORCE_LIMIT:,} for brute_force", hint="use solve_mkl_co")
    dims = [len(s) for s in choices.server]
    best, best_value = None, np.inf
    for start in range(0, space, chunk):
        flat = np.arange(start, min(start + chunk, space))
        picks = np.stack(np.unravel_index(flat, dims))  # [N, K]
        q = np.zeros((len(flat), m, c))
        rows = np.arange(len(flat))
        for i in range(n_dev):
            q[rows, choices.server[i][picks[i]]] += choices.sent[i][picks[i]]
        values = _objective(problem, q)
        k = int(np.argmin(values))  # first minimum: ties go to the lowest index, as in enumeration order
        if values[k] < best_value - 1e-12:
            best, best_value = picks[:, k], values[k]
    return _plan(problem, choices, best, "brute force")


class _Search:
    """Greedy construction and coordinate-descent local search over one pick per device."""

    def __init__(self, problem: OffloadProblem, choices: _Choices):
        self.problem, self.choices = problem, choices
        n_dev, self.m, self.c = problem.shape
        # contribution of each choice as server counts: per device [K_i, M, C]
        self.contrib = []
        for i in range(n_dev):
            block = np.zeros((len(choices.server[i]), self.m, self.c))
            block[np.arange(len(block)), choices.server[i]] = choices.sent[i]
            self.contrib.append(block)

    def best_move(self, q_without: np.ndarray, i: int) -> tuple[int, float]:
        """Best pick for device i given the other devices' counts [M, C]."""
        values = _objective(self.problem, q_without + self.contrib[i])
        k = int(np.argmin(values))
        return k, float(values[k])

    def greedy(self, order: np.ndarray) -> np.ndarray:
        pick, q = np.zeros(len(order), dtype=int), np.zeros((self.m, self.c))
        for i in order:
            pick[i], _ = self.best_move(q, i)
            q += self.contrib[i][pick[i]]
        return pick

    def improve(self, pick: np.ndarray) -> tuple[np.ndarray, float]:
        """Re-choose one device, then two devices jointly (which covers swapping their servers),
        while that lowers the objective."""
        pick = pick.copy()
        q = sum(self.contrib[i][k] for i, k in enumerate(pick))
        value = float(_objective(self.problem, q))
        improved = True
        while improved:
            improved = False
            for i in range(len(pick)):
                k, v = self.best_move(q - self.contrib[i][pick[i]], i)
                if v < value - 1e-12:
                    q += self.contrib[i][k] - self.contrib[i][pick[i]]
                    pick[i], value, improved = k, v, True
            for a, b in itertools.combinations(range(len(pick)), 2):
                rest = q - self.contrib[a][pick[a]] - self.contrib[b][pick[b]]  # [M, C]
                values = _objective(self.problem, rest + self.contrib[a][:, None] + self.contrib[b][None])  # [Ka, Kb]
                ka, kb = np.unravel_index(int(np.argmin(values)), values.shape)
                if values[ka, kb] < value - 1e-12:
                    q = rest + self.contrib[a][ka] + self.contrib[b][kb]
                    pick[a], pick[b], value, improved = ka, kb, float(values[ka, kb]), True
        return pick, value


def local_search(problem: OffloadProblem, seed: int = 0, restarts: int = 50, kick: int = 3) -> OffloadPlan:
    """Greedy construction + local search, restarted: first largest devices first, then alternately
    greedy in a random device order and the best plan so far with `kick` devices re-picked at
    random (an iterated local search); the best result is kept."""
    choices = _choices(problem)
    search, rng = _Search(problem, choices), np.random.default_rng(seed)
    sizes = problem.counts.sum(axis=1)
    best, best_value = None, np.inf
    for r in range(max(restarts, 1)):
        if r == 0:
            start = search.greedy(np.argsort(-sizes, kind="stable"))
        elif r % 2:
            start = best.copy()
            for i in rng.choice(len(sizes), size=min(kick, len(sizes)), replace=False):
                start[i] = rng.integers(len(choices.server[i]))
        else:
            start = search.greedy(rng.permutation(len(sizes)))
        pick, value = search.improve(start)
        if value < best_value - 1e-12:
            best, best_value = pick, value
    return _plan(problem, choices, best, f"local search ({restarts} restarts, seed {seed})")


def solve_mkl_co(problem: OffloadProblem, seed: int = 0, restarts: int = 50) -> OffloadPlan:
    """MKL-CO: exact by brute force when the space is at most BRUTE_FORCE_LIMIT, else local search."""
    if _space(_choices(problem)) <= BRUTE_FORCE_LIMIT:
        return brute_force(problem)
    return local_search(problem, seed, restarts)


def sample_offload(plan: OffloadPlan, device_indices: list[np.ndarray], labels: np.ndarray,
                   seed: int = 0) -> list[np.ndarray]:
    """The sample indices each server receives: per device and class, `plan.sent` indices drawn
    without replacement from that device's samples of that class. [M] arrays, sorted."""
    labels = np.asarray(labels)
    n_dev, c = plan.sent.shape
    if len(device_indices) != n_dev:
        raise SpecError(field="device_indices", value=f"{len(device_indices)} devices", accepted=f"{n_dev} devices")
    rng = np.random.default_rng(seed)
    received: list[list[np.ndarray]] = [[] for _ in range(len(plan.server_counts))]
    for i, idx in enumerate(device_indices):
        for cls in range(c):
            own = idx[labels[idx] == cls]
            if len(own) < plan.sent[i, cls]:
                raise SpecError(field="device_indices", value=f"device {i} has {len(own)} of class {cls}",
                                accepted=f"at least {plan.sent[i, cls]} (the plan's counts)")
            received[plan.server[i]].append(rng.choice(own, size=plan.sent[i, cls], replace=False))
    return [np.sort(np.concatenate(r)).astype(np.int64) if r else np.zeros(0, np.int64) for r in received]


# ----------------------------------------------------------------------------- MCC-RA


@dataclass
class Allocation:
    """A server's uplink shared among its devices (OFDMA): modelled, not measured."""

    bandwidth_hz: np.ndarray  # [n]
    power_w: np.ndarray  # [n]
    time_s: np.ndarray  # [n] time to send D_i bits at that bandwidth and power
    energy_j: np.ndarray  # [n] power * time
    total_energy_j: float
    feasible: bool  # every device meets the deadline within p_max and the band fits W
    solver: str


def channel_gain(distance_m: np.ndarray) -> np.ndarray:
    """Linear channel gain from the 3GPP macro path loss 128.1 + 37.6 log10(d_km) dB (no fading)."""
    distance_m = np.asarray(distance_m, dtype=float)
    if (distance_m <= 0).any():
        raise SpecError(field="distance_m", value=distance_m.min(), accepted="distances > 0 m")
    return 10 ** (-(128.1 + 37.6 * np.log10(distance_m / 1000)) / 10)


def _rate(b: np.ndarray, p: np.ndarray, gain: np.ndarray, n0: float) -> np.ndarray:
    """Shannon rate b log2(1 + p g / (N0 b)), bit/s."""
    return b * np.log2(1 + p * gain / (n0 * b))


def _power(b: float, bits: float, gain: float, deadline_s: float, n0: float) -> float:
    """Power that sends `bits` in exactly the deadline over band b: (N0 b / g)(2^(D/(bT)) - 1)."""
    x = bits / (b * deadline_s)
    return math.inf if x > 1000 else n0 * b / gain * (2 ** x - 1)


def _check_link_inputs(bits, gain, bandwidth_hz, deadline_s, p_max_w):
    bits, gain = np.asarray(bits, dtype=float), np.asarray(gain, dtype=float)
    if bits.ndim != 1 or bits.shape != gain.shape or (bits < 0).any() or (gain <= 0).any():
        raise SpecError(field="bits/gain", value=(bits.shape, gain.shape),
                        accepted="equal-length 1-D arrays, bits >= 0 and gains > 0")
    for name, value in (("bandwidth_hz", bandwidth_hz), ("deadline_s", deadline_s), ("p_max_w", p_max_w)):
        if not value > 0:
            raise SpecError(field=name, value=value, accepted="a number > 0")
    return bits, gain


def _allocation(b, p, bits, gain, n0, deadline_s, p_max_w, bandwidth_hz, solver) -> Allocation:
    """Time and energy of a (band, power) choice; devices with nothing to send get neither."""
    active = bits > 0
    time = np.zeros_like(bits)
    time[active] = bits[active] / _rate(b[active], p[active], gain[active], n0)
    energy = p * time
    feasible = bool((time <= deadline_s * (1 + 1e-9)).all() and (p <= p_max_w * (1 + 1e-9)).all()
                    and b.sum() <= bandwidth_hz * (1 + 1e-9))
    return Allocation(b, p, time, energy, float(energy.sum()), feasible, solver)


def uniform_allocation(bits, gain, bandwidth_hz: float, deadline_s: float, p_max_w: float,
                       n0: float = NOISE_W_PER_HZ) -> Allocation:
    """Baseline: W split equally among the devices with something to send, each at the power that
    meets the deadline. Where that exceeds p_max the device sends at p_max, misses the deadline,
    and its energy is p_max times the longer time it then takes."""
    bits, gain = _check_link_inputs(bits, gain, bandwidth_hz, deadline_s, p_max_w)
    active = bits > 0
    b = np.where(active, bandwidth_hz / max(active.sum(), 1), 0.0)
    p = np.array([min(_power(b[i], bits[i], gain[i], deadline_s, n0), p_max_w) if active[i] else 0.0
                  for i in range(len(bits))])
    return _allocation(b, p, bits, gain, n0, deadline_s, p_max_w, bandwidth_hz, "uniform")


def _min_band(bits: float, gain: float, deadline_s: float, p_max_w: float, n0: float, w: float) -> float:
    """Least band b with p(b) <= p_max (p decreases in b), by bisection; inf if even W is too little."""
    if _power(w, bits, gain, deadline_s, n0) > p_max_w:
        return math.inf
    low = bits / (deadline_s * 1000)  # p is inf below this (2^1000)
    b = brentq(lambda b: _power(b, bits, gain, deadline_s, n0) - p_max_w, low, w, xtol=1e-12 * w, rtol=1e-14)
    return min(b * (1 + 1e-9), w)  # just inside p_max


def solve_mcc_ra(bits, gain, bandwidth_hz: float, deadline_s: float, p_max_w: float,
                 n0: float = NOISE_W_PER_HZ) -> Allocation:
    """MCC-RA for one server: min sum_i E_i(b_i) s.t. sum b_i <= W, p_i(b_i) <= p_max.

    Sending exactly for T is optimal, so E_i(b) = T p_i(b) = k_i b (e^(a_i/b) - 1) with
    k_i = T N0 / g_i, a_i = D_i ln2 / T: convex and decreasing in b. With x = a_i / b the
    marginal saving is -E_i'(b) = k_i f(x), f(x) = 1 + e^x (x - 1), increasing in x. KKT:
    every device at its own floor b_min_i or at k_i f(a_i / b_i) = mu, and the mu that fills W
    is found by brentq (derivative water-filling). When the floors alone exceed W no allocation
    meets every deadline: the band is then split in proportion to the floors, every device sends
    at p_max and is late, and its energy is p_max times its longer time (feasible=False).
    """
    bits, gain = _check_link_inputs(bits, gain, bandwidth_hz, deadline_s, p_max_w)
    active = np.flatnonzero(bits > 0)
    b, p = np.zeros_like(bits), np.zeros_like(bits)
    if len(active) == 0:
        return _allocation(b, p, bits, gain, n0, deadline_s, p_max_w, bandwidth_hz, "water-filling")
    floors = np.array([_min_band(bits[i], gain[i], deadline_s, p_max_w, n0, bandwidth_hz) for i in active])
    if floors.sum() > bandwidth_hz:
        finite = np.where(np.isfinite(floors), floors, bandwidth_hz)
        b[active] = bandwidth_hz * finite / finite.sum()
        p[active] = p_max_w
        return _allocation(b, p, bits, gain, n0, deadline_s, p_max_w, bandwidth_hz, "water-filling (infeasible)")
    a = bits[active] * math.log(2) / deadline_s  # [n]
    k = deadline_s * n0 / gain[active]  # [n]
    x_max = a / floors

    def f(x: float) -> float:
        return 1 + math.exp(x) * (x - 1)

    def band(mu: float) -> np.ndarray:
        """b_i(mu): the band where device i's marginal saving equals mu, never below its floor."""
        x = np.empty(len(a))
        for n, (ki, xm) in enumerate(zip(k, x_max)):
            y = mu / ki
            x[n] = xm if f(xm) <= y else brentq(lambda t: f(t) - y, 0.0, xm, xtol=1e-15, rtol=1e-14)
        return a / x

    mu_high = float(max(ki * f(xm) for ki, xm in zip(k, x_max)))  # every device at its floor
    if band(mu_high).sum() >= bandwidth_hz * (1 - 1e-12):
        b[active] = floors
    else:
        mu_low = mu_high
        while band(mu_low).sum() <= bandwidth_hz:
            mu_low /= 16
        log_mu = brentq(lambda t: band(math.exp(t)).sum() - bandwidth_hz, math.log(mu_low), math.log(mu_high),
                        xtol=1e-13, rtol=1e-14)
        b[active] = band(math.exp(log_mu))
        b[active] *= min(1.0, bandwidth_hz / b[active].sum())  # stay inside W after rounding
        b[active] = np.maximum(b[active], floors)
    p[active] = [_power(b[i], bits[i], gain[i], deadline_s, n0) for i in active]
    return _allocation(b, p, bits, gain, n0, deadline_s, p_max_w, bandwidth_hz, "water-filling")


def communication_cost_ratio(optimal: Allocation, uniform: Allocation) -> float:
    """Energy of the MCC-RA allocation over the uniform baseline's (below 1: MCC-RA saves)."""
    return optimal.total_energy_j / uniform.total_energy_j if uniform.total_energy_j > 0 else 1.0
