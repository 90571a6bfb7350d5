"""The input-dependent policy: a cheap confidence signal after the first units picks, per input, between the
best fixed placement and a faster one.

FLEX decides per input as well as per layer. A linear probe (softmax regression fitted on the calibration
split) reads the pooled output of the first units, and its confidence routes the input. Two shapes: the
first units run as the fixed placement (ours, at the floor) runs them and confident inputs finish on a faster
placement of the rest (one of a few precomputed at several proxy budgets); or the first units run as the
fastest placement runs them, confident inputs finish on it and the others start again on the fixed one
(worth it when the units that cost accuracy come first). The shape, the fast placement and the threshold are
chosen on validation so that the routed accuracy keeps the floor at the least expected time; test accuracy
is then measured with the same probe and threshold. When no routing pays for the probe (its hand-over to the
CPU included), every input stays on the fixed placement and nothing is probed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgepool.precision.policies import lagrangian
from edgepool.precision.problem import PlacementProblem, Targets


@dataclass
class Routing:
    probe_after: int  # units [0, probe_after) run before the decision
    fast: Targets
    accurate: Targets
    threshold: float  # confidence at or above it: the fast placement
    fast_fraction: float  # on validation
    time_s: float  # expected per input (simulated), probe included
    validation_accuracy: float
    test_accuracy: float | None = None
    test_fast_fraction: float | None = None
    probe: nn.Module | None = field(default=None, repr=False)
    measured: int = 0  # placements measured on validation to choose the routing
    restart: bool = False  # unconfident inputs start again on `accurate` (else they continue from the prefix)


def pooled(activation: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """N x features: images average over space (N x C x H x W), tokens over their unmasked positions."""
    if activation.ndim == 4:
        return activation.mean(dim=(2, 3))
    if activation.ndim == 3:
        weights = (mask if mask is not None else torch.ones(activation.shape[:2])).unsqueeze(-1).float()
        return (activation * weights).sum(1) / weights.sum(1).clamp_min(1)
    return activation.flatten(1)


def features(evaluator, prefix: tuple[str, ...], split: str) -> torch.Tensor:
    batches = evaluator.task.split(split).batches
    return torch.cat([pooled(a, b.mask) for a, b in zip(evaluator.activations(prefix, split), batches)])


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int = 200, seed: int = 0) -> nn.Module:
    """Softmax regression on standardized features (full-batch Adam: a few hundred samples, a few ms)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    probe = nn.Sequential(nn.Linear(x.shape[1], classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-3)
    z = (x - mean) / std
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(probe(z), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.eval()
    return nn.Sequential(_Standardize(mean, std), probe)


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


@torch.no_grad()
def confidence(probe: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return probe(x).softmax(-1).max(-1).values


def probe_time_s(problem: PlacementProblem, fast: Targets, probe_after: int) -> float:
    """The probe is a tiny linear layer; what it costs is the CPU reading the decision: one hand-over
    latency when the units before it ran on the accelerator."""
    last = fast[probe_after - 1]
    return problem.costs.device.accelerator.link_latency_s if last.on_accelerator else 0.0


def route(problem: PlacementProblem, evaluator, base: Targets, probe_after: int | None = None,
          budgets: int = 4) -> Routing:
    """The fastest routing that keeps the floor on validation, of two kinds (or none: all on `base`).

    Shared prefix: the first `probe_after` units run as `base` runs them; confident inputs finish on a faster
    placement of the rest. Restart: the first units run as the fastest placement runs them; confident inputs
    finish on it, the others start again on `base` (they pay the fast prefix twice over)."""
    n = problem.num_units
    task = evaluator.task
    base_ok = evaluator.correct(tuple(t.precision for t in base), "validation")
    # not probing at all is an option: every input on base, no hand-over for the decision
    best = Routing(0, base, base, float("inf"), 0.0, problem.time_of(base), base_ok.float().mean().item())
    fastest = lagrangian(problem, float("inf"))
    shared_k = probe_after or max(1, round(n / 3))
    restart_k = probe_after or max(1, round(n / 6))
    plans = [(shared_k, base[:shared_k], False), (restart_k, fastest[:restart_k], True)]
    measured = set()
    for k, prefix, restart in plans:
        if restart:
            fast_options = [fastest] if problem.time_of(fastest) < problem.time_of(base) else []
        else:
            high = sum(max(row.values()) for row in problem.proxy[k:]) or 1.0
            budgets_ = [float("inf"), *np.geomspace(high / 100, high, budgets)]
            fast_options = {lagrangian(problem.fixing(prefix), b) for b in budgets_}
            fast_options = [f for f in fast_options if problem.time_of(f) < problem.time_of(base)]
        if not fast_options:
            continue
        precisions = tuple(t.precision for t in prefix)
        probe = fit_probe(features(evaluator, precisions, "calibration"), task.calibration.labels, task.num_classes)
        conf = confidence(probe, features(evaluator, precisions, "validation"))
        extra = probe_time_s(problem, prefix, k)
        again = problem.costs.prefix(prefix, k).time_s if restart else 0.0
        for fast in fast_options:
            measured.add(fast)
            fast_ok = evaluator.correct(tuple(t.precision for t in fast), "validation")
            for threshold in sorted(set(conf.tolist())):
                use_fast = conf >= threshold
                accuracy = torch.where(use_fast, fast_ok, base_ok).float().mean().item()
                if accuracy < problem.floor - 1e-9:
                    continue
                share = use_fast.float().mean().item()
                time_s = share * problem.time_of(fast) + (1 - share) * (again + problem.time_of(base)) + extra
                if time_s < best.time_s:
                    best = Routing(k, fast, base, threshold, share, time_s, accuracy, probe=probe, restart=restart)
                break  # lower thresholds send more inputs to the fast placement: the first feasible is the fastest
    best.measured = len(measured) + 1
    return best


def measure_test(routing: Routing, evaluator) -> Routing:
    """Test accuracy of the routing: the same probe and threshold on the test inputs."""
    if routing.probe is None:  # nothing routed: the fixed placement's own accuracy
        routing.test_accuracy = evaluator.accuracy(tuple(t.precision for t in routing.accurate), "test")
        routing.test_fast_fraction = 0.0
        return routing
    prefix = tuple(t.precision for t in routing.fast[:routing.probe_after])
    use_fast = confidence(routing.probe, features(evaluator, prefix, "test")) >= routing.threshold
    fast_ok = evaluator.correct(tuple(t.precision for t in routing.fast), "test")
    acc_ok = evaluator.correct(tuple(t.precision for t in routing.accurate), "test")
    routing.test_accuracy = torch.where(use_fast, fast_ok, acc_ok).float().mean().item()
    routing.test_fast_fraction = use_fast.float().mean().item()
    return routing
