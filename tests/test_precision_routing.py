"""The input-dependent policy on a hand-made evaluator: a probe that can tell easy inputs from hard ones
routes the easy ones to a faster placement and keeps the floor; a useless probe routes nothing."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from edgepool.catalog import get_device
from edgepool.precision.cost import CostTable, UnitCost
from edgepool.precision.input_dependent import measure_test, route
from edgepool.precision.placement import CPU
from edgepool.precision.problem import PlacementProblem
from edgepool.precision.tasks import Batch, Split


def split(n, seed, informative=True):
    """Features: easy inputs carry their label as a strong one-hot, hard ones are noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    easy = torch.rand(n, generator=g) < 0.7
    x = torch.randn(n, 8, generator=g) * 0.3
    if informative:
        x[easy, y[easy]] += 4.0
    return Split([Batch(x, y)]), easy


class FakeEvaluator:
    """Accuracy depends on the last unit only: fp32 is always right, int8 is right on easy inputs only."""

    def __init__(self, informative=True):
        cal, _ = split(300, 0, informative)
        val, val_easy = split(400, 1, informative)
        test, test_easy = split(400, 2, informative)
        self.easy = {"validation": val_easy, "test": test_easy}
        self.task = SimpleNamespace(calibration=cal, validation=val, test=test, num_classes=3,
                                    split=lambda name: {"calibration": cal, "validation": val, "test": test}[name])

    def activations(self, prefix, split_name):
        return [b.x for b in self.task.split(split_name).batches]

    def correct(self, precisions, split_name):
        n = len(self.task.split(split_name))
        return torch.ones(n, dtype=torch.bool) if precisions[-1] == "fp32" else self.easy[split_name].clone()

    def accuracy(self, precisions, split_name="validation"):
        return self.correct(precisions, split_name).float().mean().item()


def problem(evaluator, max_loss):
    rng = random.Random(0)
    units = [UnitCost(f"u{i}", rng.uniform(1e7, 5e7), 1e5, 1e4, 1e4) for i in range(3)]
    costs = CostTable.build(get_device("rpi5-hailo-8l"), units)
    proxy = [{"fp32": 0.0, "int8": 0.0}, {"fp32": 0.0, "int8": 0.0}, {"fp32": 0.0, "int8": 1.0}]
    return PlacementProblem(costs, proxy, proxy, 1.0, max_loss, lambda precs: evaluator.accuracy(precs))


def test_confident_inputs_take_the_fast_placement_and_the_floor_holds():
    evaluator = FakeEvaluator()
    p = problem(evaluator, max_loss=5.0)
    acc = p.costs.targets[1]
    base = (acc, acc, CPU)  # keeps the floor: the last unit in fp32
    routing = measure_test(route(p, evaluator, base, probe_after=1), evaluator)
    assert routing.fast[-1] == acc and routing.accurate == base
    assert 0.5 < routing.fast_fraction < 0.75  # about the 70% easy inputs, a few kept back for the floor
    assert routing.validation_accuracy >= p.floor
    assert routing.time_s < p.time_of(base)
    assert routing.test_accuracy == pytest.approx(routing.validation_accuracy, abs=0.03)


def test_a_probe_that_sees_nothing_routes_nothing():
    evaluator = FakeEvaluator(informative=False)
    p = problem(evaluator, max_loss=5.0)
    acc = p.costs.targets[1]
    routing = measure_test(route(p, evaluator, (acc, acc, CPU), probe_after=1), evaluator)
    assert routing.fast_fraction < 0.2 and routing.validation_accuracy >= p.floor
    assert routing.time_s <= p.time_of((acc, acc, CPU))
