"""From a pool and a method to a `RunSpec`: who holds which samples, who trains, with what configuration.

- FedPipe: the matrices ranked by gradient-weight sensitivity get LoRA; every device's rank, batch, local
  steps and base precision come from its integer program (`rank_plan.plan_devices`) over its CPU share, its
  training memory and the round deadline.
- Homogeneous LoRA: one configuration for all (LoRA's usual query+value targets); a device whose memory
  cannot hold it sits out; no deadline (the round waits for the slowest).
- FedAvg / FedProx: every device trains the whole CNN on its own non-IID samples.
- FlocOff: devices offload part of their samples to edge servers (MKL-CO picks server and fraction per
  device so each server's label mix is close to the global one), the uplinks get bandwidth and power from
  MCC-RA, and the edge servers train. The offloading itself is modelled (radio channel), not run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepool.cluster import Cluster
from edgepool.errors import SpecError
from edgepool.federated.partition import dirichlet_partition
from edgepool.federated.spec import NodeSpec, RunSpec

RESERVED_MEMORY_BYTES = 900 * 2**20  # OS, Flower's SuperNode and a warm torch process: not for training
MNIST_SAMPLE_BYTES = 785  # 28x28 uint8 + a label byte


@dataclass
class Pool:
    """The devices of one run: the server (SuperLink) and the clients, each client's share of one host core
    (its testbed CPU quota) and the memory its training may use."""

    cluster: Cluster
    server: str
    clients: list[str]
    cores: dict[str, float]
    memory: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, cluster: Cluster, server: str, clients: list[str] | None = None, cpu_budget: float | None = None,
           max_cores_per_device: float = 1.0, reserved_bytes: int = RESERVED_MEMORY_BYTES) -> "Pool":
        from edgepool.testbed.testbed import device_limits

        if server not in cluster.devices:
            raise SpecError(field="server", value=server, accepted=", ".join(cluster.devices))
        clients = clients or [n for n in cluster.devices if n != server]
        limits = device_limits(cluster, [server, *clients], cpu_budget, max_cores_per_device)
        memory = {n: max(1, cluster.devices[n].memory_bytes - reserved_bytes) for n in clients}
        return cls(cluster, server, clients, {n: limits[n].cpu_cores for n in limits}, memory)


def split_samples(labels: np.ndarray, n: int, alpha: float, seed: int, min_size: int = 8) -> list[list[int]]:
    """Non-IID: each class's samples over `n` devices in Dirichlet(alpha) shares."""
    return [[int(i) for i in part] for part in dirichlet_partition(labels, n, alpha, seed, min_size=min_size)]


# ----------------------------------------------------------------------------- LoRA: FedPipe and its baseline
def fedpipe_spec(pool: Pool, labels: np.ndarray, cost, targets: list[str], *, deadline_s: float, alpha: float,
                 rounds: int, aggregator: str = "svd", lr: float = 2e-3, seed: int = 0, **spec_fields) -> RunSpec:
    """Per-device rank, batch, steps and precision from FedPipe's integer program (one per device)."""
    from edgepool.federated.rank_plan import DeviceBudget, plan_devices

    parts = split_samples(labels, len(pool.clients), alpha, seed)
    budgets = [DeviceBudget(name=d, cores=pool.cores[d], memory_bytes=pool.memory[d], deadline_s=deadline_s,
                            samples=len(p)) for d, p in zip(pool.clients, parts)]
    plan = plan_devices(cost, budgets)
    nodes = [_node(d, p, choice) for d, p, choice in zip(pool.clients, parts, plan.devices)]
    return RunSpec(method="fedpipe", task=spec_fields.pop("task", "tweets-minilm"), nodes=nodes, rounds=rounds,
                   lr=lr, seed=seed, aggregator=aggregator, target_modules=targets,
                   notes={"plan": plan.to_dict(), "deadline_s": deadline_s, "alpha": alpha}, **spec_fields).validate()


def homogeneous_spec(pool: Pool, labels: np.ndarray, cost, *, rank: int, batch: int, steps: int, alpha: float,
                     rounds: int, lr: float = 2e-3, seed: int = 0, **spec_fields) -> RunSpec:
    """Every device the same LoRA (LoRA's default query+value targets, fp32 base); who cannot fit it sits out."""
    from edgepool.federated.rank_plan import DeviceBudget, homogeneous_plan

    parts = split_samples(labels, len(pool.clients), alpha, seed)
    budgets = [DeviceBudget(name=d, cores=pool.cores[d], memory_bytes=pool.memory[d], deadline_s=1e9,
                            samples=len(p)) for d, p in zip(pool.clients, parts)]
    plan = homogeneous_plan(cost, budgets, rank=rank, batch=batch, bits=32, steps=steps)
    nodes = [_node(d, p, choice) for d, p, choice in zip(pool.clients, parts, plan.devices)]
    return RunSpec(method="homogeneous-lora", task=spec_fields.pop("task", "tweets-minilm"), nodes=nodes,
                   rounds=rounds, lr=lr, seed=seed, aggregator="fedavg", target_modules=None,
                   notes={"plan": plan.to_dict(), "alpha": alpha}, **spec_fields).validate()


def _node(device: str, indices: list[int], choice) -> NodeSpec:
    if not choice.feasible:
        return NodeSpec(device=device, train_indices=indices, participates=False, rank=8, reason=choice.reason)
    return NodeSpec(device=device, train_indices=indices, rank=choice.rank, batch=choice.batch, steps=choice.steps,
                    bits=choice.bits)


# ----------------------------------------------------------------------------- whole-model: FedAvg, FedProx, FlocOff
def raw_spec(method: str, devices: list[str], labels: np.ndarray, *, alpha: float, rounds: int, batch: int,
             steps: int, lr: float, seed: int = 0, proximal_mu: float = 0.0, task: str = "mnist",
             **spec_fields) -> RunSpec:
    """FedAvg or FedProx on the devices' own non-IID samples."""
    parts = split_samples(labels, len(devices), alpha, seed)
    nodes = [NodeSpec(device=d, train_indices=p, batch=batch, steps=steps) for d, p in zip(devices, parts)]
    return RunSpec(method=method, task=task, nodes=nodes, rounds=rounds, lr=lr, seed=seed, proximal_mu=proximal_mu,
                   notes={"alpha": alpha}, **spec_fields).validate()


@dataclass
class Radio:
    """The devices' uplinks to the edge servers, modelled (FlocOff's MCC-RA setting; nothing here is measured):
    per-server bandwidth W shared by OFDMA, a deadline, a maximum transmit power, and the distances."""

    bandwidth_hz: float = 2e6
    deadline_s: float = 4.0
    p_max_w: float = 0.2
    min_distance_m: float = 50.0
    max_distance_m: float = 1000.0


def flocoff_spec(devices: list[str], servers: list[str], labels: np.ndarray, link_bps: dict[str, float], *,
                 alpha: float, rounds: int, batch: int, steps: int, lr: float, offload_deadline_s: float,
                 radio: Radio | None = None, seed: int = 0, task: str = "mnist", **spec_fields) -> RunSpec:
    """MKL-CO over the devices' non-IID samples (the same split FedAvg trains on), MCC-RA for their uplinks,
    and a spec whose nodes are the edge servers with the samples they received."""
    from edgepool.federated import flocoff

    radio = radio or Radio()
    parts = split_samples(labels, len(devices), alpha, seed)
    n_classes = int(labels.max()) + 1
    counts = np.array([np.bincount(labels[p], minlength=n_classes) for p in parts])  # [N, C]
    bandwidth = np.array([[link_bps[d]] * len(servers) for d in devices], dtype=float)  # [N, M]
    problem = flocoff.offload_problem_from_links(counts, bandwidth, offload_deadline_s, MNIST_SAMPLE_BYTES,
                                                 min_server_samples=4 * batch)
    plan = flocoff.solve_mkl_co(problem, seed=seed)
    received = flocoff.sample_offload(plan, [np.asarray(p) for p in parts], labels, seed=seed)

    rng = np.random.default_rng(seed)
    distances = rng.uniform(radio.min_distance_m, radio.max_distance_m, len(devices))
    gain = flocoff.channel_gain(distances)
    optimal_j = uniform_j = 0.0
    allocations = []
    for j, server in enumerate(servers):
        mine = np.flatnonzero((plan.server == j) & (plan.offloaded > 0))
        if not len(mine):
            continue
        bits = plan.offloaded[mine] * MNIST_SAMPLE_BYTES * 8.0
        args = (bits, gain[mine], radio.bandwidth_hz, radio.deadline_s, radio.p_max_w)
        best, even = flocoff.solve_mcc_ra(*args), flocoff.uniform_allocation(*args)
        optimal_j += best.total_energy_j
        uniform_j += even.total_energy_j
        allocations.append({"server": server, "devices": [devices[i] for i in mine],
                            "energy_j": best.total_energy_j, "uniform_energy_j": even.total_energy_j,
                            "feasible": bool(best.feasible), "uniform_feasible": bool(even.feasible)})
    nodes = [NodeSpec(device=s, train_indices=[int(i) for i in r], batch=batch, steps=steps,
                      participates=len(r) >= batch, reason="" if len(r) >= batch else "received too few samples")
             for s, r in zip(servers, received)]
    notes = {"alpha": alpha, "kl_before": plan.kl_before, "kl_after": plan.kl_after,
             "kl_reduction_fraction": plan.kl_reduction_fraction, "offloaded_samples": int(plan.offloaded.sum()),
             "device_samples": int(counts.sum()), "assignment": {d: servers[s] for d, s in zip(devices, plan.server)},
             "fraction": {d: float(f) for d, f in zip(devices, plan.fraction)},
             "comm_energy_j": optimal_j, "uniform_comm_energy_j": uniform_j,
             "comm_cost_ratio_vs_uniform": optimal_j / uniform_j if uniform_j > 0 else 1.0,
             "allocations": allocations, "radio": radio.__dict__, "solver": plan.solver,
             "modelled": "offloading transfers and radio energy are modelled (MKL-CO, MCC-RA), not run"}
    return RunSpec(method="flocoff", task=task, nodes=nodes, rounds=rounds, lr=lr, seed=seed, notes=notes,
                   **spec_fields).validate()
