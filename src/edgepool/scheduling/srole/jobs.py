"""Training jobs for SROLE: kinds from real model profiles, planned once per node, and a seeded workload.

A job kind is a zoo model trained with a batch size. Its time on a node is planned once when the environment is
built: the largest micro-batch (a power-of-two divisor of the batch) whose training memory
(`CostModel.training_memory`) fits the node, and `CostModel.layers_time(..., "fwdbwd")` of that micro-batch times
the accumulation steps, per iteration. A job then runs `iterations` of that on one node. Moving a job moves its
data set and its initial weights over the link (`Fleet.transfer_s`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.profile import ModelProfile
from edgepool.scheduling.arrivals import poisson_arrivals
from edgepool.scheduling.fleet import Fleet

# ImageNet's training JPEGs average about 110 KB (1.28 M images in ~140 GB): the bytes of one stored sample.
SAMPLE_BYTES = 110e3


@dataclass(frozen=True)
class JobKind:
    """A model trained at a batch size; `iteration_s[j]` is one iteration's seconds on node j (planned)."""

    model: str
    batch: int
    weights_bytes: float
    iteration_s: np.ndarray  # (nodes,)
    microbatch: np.ndarray  # (nodes,) the micro-batch the plan uses there


@dataclass(frozen=True)
class Job:
    """One job: where and when it arrives, what it trains, for how long, and the data set it brings."""

    origin: int
    arrival_s: float
    kind: int
    iterations: int
    dataset_bytes: float


def plan_kind(profile: ModelProfile, fleet: Fleet, batch: int) -> JobKind:
    """Plan a kind on every node: largest fitting micro-batch, gradient accumulation up to `batch`."""
    cost: CostModel = fleet.cost_model
    layers = len(profile)
    times, micro = [], []
    for node in fleet.nodes:
        mb = batch
        while mb > 1 and cost.training_memory(profile, 0, layers, mb) > node.device.memory_bytes:
            mb //= 2
        if cost.training_memory(profile, 0, layers, mb) > node.device.memory_bytes:
            times.append(np.inf)  # does not fit even one sample at a time: the node can never take this kind
        else:
            times.append(cost.layers_time(profile, 0, layers, node.device, mb, "fwdbwd") * (batch / mb))
        micro.append(mb)
    return JobKind(model=profile.model, batch=batch, weights_bytes=cost.weights_bytes(profile, 0, layers),
                   iteration_s=np.array(times), microbatch=np.array(micro))


@dataclass(frozen=True)
class Workload:
    """How jobs arrive: per-node Poisson rates, kind mix, iterations and data-set sizes (all ranges inclusive)."""

    rates_per_s: tuple[float, ...]  # one per node
    horizon_s: float
    kind_weights: tuple[float, ...]  # one per kind
    iterations: tuple[int, int] = (20, 120)
    dataset_samples: tuple[int, int] = (300, 3000)

    def check(self, nodes: int, kinds: int) -> None:
        if len(self.rates_per_s) != nodes or any(r < 0 for r in self.rates_per_s):
            raise SpecError("workload.rates_per_s", self.rates_per_s, f"{nodes} non-negative rates, one per node")
        if len(self.kind_weights) != kinds or any(w < 0 for w in self.kind_weights) or sum(self.kind_weights) <= 0:
            raise SpecError("workload.kind_weights", self.kind_weights, f"{kinds} non-negative weights, not all 0")
        if self.horizon_s <= 0:
            raise SpecError("workload.horizon_s", self.horizon_s, "a positive number of seconds")

    def draw(self, rng: np.random.Generator) -> list[Job]:
        """The jobs of one episode, sorted by arrival; the same generator state gives the same jobs."""
        p = np.asarray(self.kind_weights, dtype=float)
        p /= p.sum()
        jobs = []
        for node, rate in enumerate(self.rates_per_s):
            for t in poisson_arrivals(rate, self.horizon_s, rng):
                jobs.append(Job(origin=node, arrival_s=float(t), kind=int(rng.choice(len(p), p=p)),
                                iterations=int(rng.integers(self.iterations[0], self.iterations[1] + 1)),
                                dataset_bytes=float(rng.integers(self.dataset_samples[0],
                                                                 self.dataset_samples[1] + 1) * SAMPLE_BYTES)))
        return sorted(jobs, key=lambda j: (j.arrival_s, j.origin))


def job_run_s(job: Job, kinds: list[JobKind]) -> np.ndarray:
    """Seconds the job computes on each node (inf where its kind cannot fit)."""
    return kinds[job.kind].iteration_s * job.iterations


def job_transfer_s(job: Job, kinds: list[JobKind], fleet: Fleet) -> np.ndarray:
    """Seconds to move the job's data set and weights from its origin to each node (0 to stay)."""
    nbytes = job.dataset_bytes + kinds[job.kind].weights_bytes
    return np.array([fleet.transfer_s(job.origin, j, nbytes) for j in range(len(fleet))])
