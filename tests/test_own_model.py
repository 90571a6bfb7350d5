"""One's own model: `bundle_from_module` knows the output shape, splits what can be split and says what cannot,
a stage without parameters runs, and examples/own_model.py goes from profile to a real run."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.models.zoo import bundle_from_module
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.runtime import ModelSpec, RunOptions, execute
from edgepool.runtime.data import NoParameters, make_optimizer, step_batch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class NotAChain(Chain):
    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) * 2 + 1


def test_the_output_shape_comes_from_the_model_and_targets_follow_it():
    """Before: target_shape was accepted and never used; every run died on bundle.config.output_shape = None."""
    bundle = bundle_from_module(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)), torch.zeros(1, 8))
    assert bundle.config["output_shape"] == [10]
    inputs, targets = step_batch(bundle, 4, None, seed=0, step=0)
    assert inputs.shape == (4, 8) and targets.shape == (4, 10)
    assert bundle_from_module(nn.Sequential(nn.Linear(8, 10)), torch.zeros(2, 8), target_shape=(10,))
    with pytest.raises(SpecError, match=r"target_shape = \(3,\) is not valid.*output shape of the model, \(10,\)"):
        bundle_from_module(nn.Sequential(nn.Linear(8, 10)), torch.zeros(1, 8), target_shape=(3,))


def test_a_module_that_is_not_sequential_is_one_block_and_says_so():
    with pytest.warns(UserWarning, match="Chain is not an nn.Sequential, so it is one block.*list of blocks"):
        bundle = bundle_from_module(Chain(), torch.zeros(1, 8))
    assert len(bundle.blocks) == 1 and bundle.config["output_shape"] == [3]


def test_a_list_of_blocks_or_a_chain_of_children_is_split():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        listed = bundle_from_module([nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)], torch.zeros(1, 8))
        chain = Chain()
        split = bundle_from_module(chain, torch.zeros(1, 8), split_children=True)
    assert len(listed.blocks) == 3 and len(split.blocks) == 3
    x = torch.randn(5, 8)
    torch.testing.assert_close(split.blocks(x), chain(x))
    with pytest.raises(SpecError, match="split_children = True is not valid.*NotAChain's does not"):
        bundle_from_module(NotAChain(), torch.zeros(1, 8), split_children=True)
    with pytest.raises(SpecError, match=r"blocks\[1\] = 'Linear' is not valid; accepted: blocks that apply in order"):
        bundle_from_module([nn.Linear(8, 16), nn.Linear(15, 3)], torch.zeros(1, 8))
    with pytest.raises(SpecError, match=r"module\[1\] = 'int'"):
        bundle_from_module([nn.Linear(8, 16), 3], torch.zeros(1, 8))
    with pytest.raises(SpecError, match="example_input = 'list'"):
        bundle_from_module(nn.Sequential(nn.Linear(8, 3)), [0.0] * 8)


def test_looking_at_the_model_leaves_its_modes_and_statistics_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    before = model[1].running_mean.clone()
    bundle_from_module(model, torch.randn(1, 8))  # one sample: batch norm would fail in training mode
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, before)


def test_a_stage_without_parameters_gets_an_optimizer_that_does_nothing():
    """Before: `optimizer got an empty parameter list` killed the worker of a ReLU-only stage."""
    optimizer = make_optimizer([], "adam", 0.1)
    assert isinstance(optimizer, NoParameters)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with pytest.raises(SpecError, match="optimizer = 'lamb'"):
        make_optimizer([], "lamb")


def flatten_first_relu_last():
    """Stage 0 (Flatten) and stage 2 (ReLU) of the plan below hold no parameters."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4), nn.ReLU())
    return bundle_from_module(model, torch.zeros(1, 3, 4), name="flat-mlp")


@pytest.mark.slow
def test_first_and_last_stages_without_parameters_run(tmp_path):
    stage = lambda layers, device: StagePlan(layers=layers, devices=[device], shares=[1.0])  # noqa: E731
    plan = Plan(planner="gpipe", model="flat-mlp", cluster="test", num_layers=5, batch=8, microbatches=2,
                schedule="gpipe", pipelines=[PipelinePlan(stages=[stage((0, 1), "a"), stage((1, 4), "b"),
                                                                  stage((4, 5), "c")])])
    outcome = execute(plan, None, "local", RunOptions(steps=2, model=ModelSpec(factory=f"{__name__}:"
                                                                                "flatten_first_relu_last"),
                                                      env={"PYTHONPATH": str(Path(__file__).parent)},
                                                      timeout_s=90, run_dir=tmp_path))
    losses = outcome.report.metrics["loss_per_step"]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert outcome.report.per_device["a"].busy_s > 0


def _example():
    spec = importlib.util.spec_from_file_location("own_model_example", EXAMPLES / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_own_model_example_profiles_plans_simulates_and_trains(tmp_path):
    """The issue's case: gpipe of Linear, ReLU, Linear, ReLU, Linear over the 4 home devices, by factory name."""
    out = _example().main(["--steps", "2", "-o", str(tmp_path)])
    plan, simulated, measured = out["plan"], out["simulated"], out["measured"]
    assert plan.feasible and len(plan.pipelines[0].stages) == 4
    relu_only = [s for s in plan.pipelines[0].stages if s.layers in ((1, 2), (3, 4))]
    assert relu_only, "the plan has no stage without parameters: the test proves less than it says"
    assert simulated.source == "simulated" and simulated.throughput > 0
    assert measured.source == "measured" and measured.throughput > 0
    assert len(measured.metrics["loss_per_step"]) == 2
    assert (tmp_path / "report.json").exists()
