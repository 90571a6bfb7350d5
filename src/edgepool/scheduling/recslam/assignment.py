"""Robot-to-edge-server assignment for one RecSLAM fusion round: the problem, its simulated round, and solvers.

A round: every robot uploads its scans to its server over that server's Wi-Fi access point (one robot at a time:
the AP's airtime is shared), the server fuses them first in, first out (`NodeQueues`), then sends its submap
delta to the cloud, which merges the submaps one at a time. The round's latency is when the cloud's last merge
ends (simulated).

Solvers minimise the *load* surrogate, max over used servers of (link latency + sum of the robots' upload +
fusion + submap upload + merge seconds): an upper bound on the server's part (upload and fusion are not
overlapped) that ignores queueing at the cloud (its merges are short). It is linear, so the integer program is
exact for it; the simulated round is what every report quotes.

- `solve_ip`: the min-max integer program (scipy.optimize.milp, HiGHS) with per-server memory capacity.
- `greedy`: earliest completion time, robots in the order given (online). Bound (uncapacitated; any order): its
  load <= sum_r min_s c[r, s] + max_s f[s] <= S * OPT + max_s f[s], where c is the per-robot cost, f the link
  latency and S the number of servers (the induction: the chosen server ends no later than the robot's cheapest
  server would, which ends no later than the old maximum plus that cheapest cost). Tight cases exist, so the bound
  is loose; the measured gap to the IP is reported beside it.
- `nearest`: each robot to the closest server; `random_assignment`: a uniformly random server in Wi-Fi range.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from edgepool.errors import SpecError
from edgepool.scheduling.queues import NodeQueues


@dataclass
class AssignmentProblem:
    """Per-robot, per-server seconds of one round (R robots, S servers); `inf` upload = out of Wi-Fi range."""

    upload_s: np.ndarray  # (R, S) the robot's scans over the server's AP
    fuse_s: np.ndarray  # (R, S) ICP + grid update of the robot's scans on the server
    submap_s: np.ndarray  # (R, S) the robot's share of the server's submap delta over the server-cloud link
    merge_s: np.ndarray  # (R,) the cloud merging that share
    link_latency_s: np.ndarray  # (S,) server -> cloud
    memory_bytes: np.ndarray  # (R,) what fusing the robot holds on its server
    capacity_bytes: np.ndarray  # (S,) memory a server gives to fusion
    distance_m: np.ndarray  # (R, S)

    def __post_init__(self):
        r, s = self.upload_s.shape
        for name in ("fuse_s", "submap_s", "distance_m"):
            if getattr(self, name).shape != (r, s):
                raise SpecError(name, getattr(self, name).shape, f"shape ({r}, {s}) like upload_s")
        if not np.isfinite(self.upload_s).any(axis=1).all():
            raise SpecError("upload_s", "a robot out of every server's range", "each robot within one server's range")

    @property
    def robots(self) -> int:
        return self.upload_s.shape[0]

    @property
    def servers(self) -> int:
        return self.upload_s.shape[1]

    @property
    def cost(self) -> np.ndarray:
        """(R, S) seconds a robot adds to a server's load (inf where out of range)."""
        return self.upload_s + self.fuse_s + self.submap_s + self.merge_s[:, None]

    def loads(self, assign: np.ndarray) -> np.ndarray:
        """(S,) the surrogate load of each server (0 when unused)."""
        c = self.cost[np.arange(self.robots), assign]
        load = np.bincount(assign, weights=c, minlength=self.servers)
        used = np.bincount(assign, minlength=self.servers) > 0
        return np.where(used, load + self.link_latency_s, 0.0)

    def objective(self, assign: np.ndarray) -> float:
        return float(self.loads(assign).max())

    def violations(self, assign: np.ndarray) -> int:
        """Servers over their memory capacity plus robots out of their server's range."""
        mem = np.bincount(assign, weights=self.memory_bytes, minlength=self.servers)
        out = ~np.isfinite(self.upload_s[np.arange(self.robots), assign])
        return int((mem > self.capacity_bytes + 1e-6).sum() + out.sum())


@dataclass
class RoundResult:
    """One simulated fusion round under an assignment."""

    latency_s: float  # when the cloud's last merge ends
    robot_latency_s: np.ndarray  # (R,) when each robot's scans are fused on its server
    server_done_s: np.ndarray  # (S,) when each server's fusion ends (0 when unused)


def simulate_round(problem: AssignmentProblem, assign: np.ndarray) -> RoundResult:
    """Event order of one round: per-AP uploads, per-server FIFO fusion, submaps to the cloud, FIFO merges."""
    assign = np.asarray(assign, int)
    if assign.shape != (problem.robots,) or assign.min() < 0 or assign.max() >= problem.servers:
        raise SpecError("assignment", assign.tolist(), f"{problem.robots} server indices in 0..{problem.servers - 1}")
    air, cpu, cloud = NodeQueues(problem.servers), NodeQueues(problem.servers), NodeQueues(1)
    robot_done = np.zeros(problem.robots)
    for r in range(problem.robots):  # robots send at the round's start; each AP serves them in robot order
        s = assign[r]
        arrived = air.submit(s, 0.0, float(problem.upload_s[r, s]))
        robot_done[r] = cpu.submit(s, arrived, float(problem.fuse_s[r, s]))
    done = np.zeros(problem.servers)
    ready = []
    for s in range(problem.servers):
        mine = assign == s
        if mine.any():
            done[s] = robot_done[mine].max()
            ready.append((done[s] + problem.link_latency_s[s] + problem.submap_s[mine, s].sum(), s))
    end = 0.0
    for at, s in sorted(ready):  # the cloud merges the submaps as they arrive
        end = cloud.submit(0, at, float(problem.merge_s[assign == s].sum()))
    return RoundResult(latency_s=float(end), robot_latency_s=robot_done, server_done_s=done)


@dataclass
class IpSolution:
    assign: np.ndarray
    objective: float
    seconds: float  # solve wall time on this host
    status: str
    mip_gap: float | None


def solve_ip(problem: AssignmentProblem, time_limit_s: float = 20.0, capacity: bool = True) -> IpSolution:
    """min z  s.t. z >= f[s] y[s] + sum_r c[r,s] x[r,s];  sum_s x[r,s] = 1;  x[r,s] <= y[s];
    sum_r m[r] x[r,s] <= M[s] (with `capacity`);  x = 0 out of range;  x, y binary. Variables: x (R*S), y (S), z."""
    r_n, s_n = problem.robots, problem.servers
    cost = problem.cost
    reach = np.isfinite(cost)
    c = np.where(reach, cost, 0.0)
    nx = r_n * s_n
    n = nx + s_n + 1
    xi = lambda r, s: r * s_n + s  # noqa: E731
    rows, lo, hi = [], [], []
    a = lil_matrix((s_n + r_n + nx + s_n, n))
    k = 0
    for s in range(s_n):  # load: sum c x + f y - z <= 0
        for r in range(r_n):
            a[k, xi(r, s)] = c[r, s]
        a[k, nx + s], a[k, n - 1] = problem.link_latency_s[s], -1.0
        lo.append(-np.inf), hi.append(0.0)
        k += 1
    for r in range(r_n):  # each robot on one server
        for s in range(s_n):
            a[k, xi(r, s)] = 1.0
        lo.append(1.0), hi.append(1.0)
        k += 1
    for r in range(r_n):  # x <= y
        for s in range(s_n):
            a[k, xi(r, s)], a[k, nx + s] = 1.0, -1.0
            lo.append(-np.inf), hi.append(0.0)
            k += 1
    for s in range(s_n):  # memory
        for r in range(r_n):
            a[k, xi(r, s)] = problem.memory_bytes[r] / 1e9
        lo.append(-np.inf), hi.append(problem.capacity_bytes[s] / 1e9 if capacity else np.inf)
        k += 1
    upper = np.ones(n)
    upper[:nx] = reach.reshape(-1).astype(float)
    upper[-1] = np.inf
    objective = np.zeros(n)
    objective[-1] = 1.0
    integrality = np.ones(n)
    integrality[-1] = 0
    start = time.perf_counter()
    res = milp(objective, constraints=LinearConstraint(a.tocsr(), lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(n), upper), options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6})
    seconds = time.perf_counter() - start
    if res.x is None:
        raise SpecError("assignment", f"no feasible assignment ({res.message})",
                        "enough server memory and Wi-Fi range for every robot")
    assign = res.x[:nx].reshape(r_n, s_n).argmax(axis=1)
    return IpSolution(assign=assign, objective=problem.objective(assign), seconds=seconds,
                      status="optimal" if res.status == 0 else str(res.message),
                      mip_gap=getattr(res, "mip_gap", None))


def greedy(problem: AssignmentProblem, order: np.ndarray | None = None, capacity: bool = True) -> np.ndarray:
    """Earliest completion: each robot (in `order`, default robot order) to the in-range server whose load
    after taking it is least, among those with memory left (all in range when none has)."""
    cost, mem = problem.cost, np.zeros(problem.servers)
    load = np.zeros(problem.servers)
    used = np.zeros(problem.servers, bool)
    assign = np.zeros(problem.robots, int)
    for r in (range(problem.robots) if order is None else order):
        after = load + cost[r] + np.where(used, 0.0, problem.link_latency_s)
        fits = mem + problem.memory_bytes[r] <= problem.capacity_bytes + 1e-6
        ok = np.isfinite(after) & (fits if capacity else True)
        if not ok.any():
            ok = np.isfinite(after)
        s = int(np.flatnonzero(ok)[after[ok].argmin()])
        assign[r], load[s], used[s] = s, after[s], True
        mem[s] += problem.memory_bytes[r]
    return assign


def greedy_bound(problem: AssignmentProblem) -> float:
    """The greedy's guarantee without capacities: sum_r min_s c[r, s] + max_s f[s] (>= its load, any order)."""
    return float(np.min(problem.cost, axis=1).sum() + problem.link_latency_s.max())


def nearest(problem: AssignmentProblem) -> np.ndarray:
    return problem.distance_m.argmin(axis=1)


def random_assignment(problem: AssignmentProblem, rng: np.random.Generator) -> np.ndarray:
    reach = np.isfinite(problem.upload_s)
    return np.array([rng.choice(np.flatnonzero(reach[r])) for r in range(problem.robots)])


def brute_force(problem: AssignmentProblem, capacity: bool = True) -> tuple[np.ndarray, float]:
    """Every assignment (S^R of them: tiny cases only); the best feasible one under the surrogate."""
    if problem.servers ** problem.robots > 2_000_000:
        raise SpecError("brute_force", (problem.robots, problem.servers), "servers ** robots <= 2,000,000")
    best, best_val = None, np.inf
    for combo in itertools.product(range(problem.servers), repeat=problem.robots):
        a = np.array(combo)
        if capacity and problem.violations(a):
            continue
        if not capacity and not np.isfinite(problem.upload_s[np.arange(problem.robots), a]).all():
            continue
        val = problem.objective(a)
        if val < best_val:
            best, best_val = a, val
    return best, best_val
