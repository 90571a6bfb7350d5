"""Real multi-process runs (gloo over loopback): weights equal single-process training; failures do not hang."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.runtime import ModelSpec, RunOptions, execute, reference_train
from edgepool.testbed import WorkerFailed

TESTS = str(Path(__file__).parent)
TOY = ModelSpec(factory="runtime_toy:tied_mlp", kwargs={"width": 16, "depth": 6}, seed=3)
STEPS, LR = 3, 0.2


def stage(layers, devices, shares=None):
    return StagePlan(layers=layers, devices=devices, shares=shares or [1.0 / len(devices)] * len(devices))


def plan(name, pipelines, microbatches, schedule="1f1b", num_layers=6, batch=12, model="tied-mlp"):
    return Plan(planner=name, model=model, cluster="test", num_layers=num_layers, batch=batch,
                microbatches=microbatches, schedule=schedule, pipelines=pipelines)


PLANS = {
    # data parallel, uneven shares
    "dp": plan("dp", [PipelinePlan(stages=[stage((0, 6), ["a", "b", "c"], [0.5, 0.3, 0.2])])], 1),
    # three stages, all forwards then all backwards
    "gpipe": plan("gpipe", [PipelinePlan(stages=[stage((0, 1), ["a"]), stage((1, 4), ["b"]), stage((4, 6), ["c"])])],
                  4, "gpipe"),
    # PipeDream-Flush: 1F1B over two stages
    "pipedream": plan("pipedream", [PipelinePlan(stages=[stage((0, 3), ["a"]), stage((3, 6), ["b"])])], 3),
    # hybrid: a data-parallel stage group with uneven shares feeding one device, and a second pipeline cut
    # elsewhere; the tied weight lives on the first and last stage of both pipelines
    "hybrid": plan("hybrid", [
        PipelinePlan(batch_share=0.6, stages=[stage((0, 2), ["a", "b"], [0.7, 0.3]), stage((2, 6), ["c"])]),
        PipelinePlan(batch_share=0.4, stages=[stage((0, 4), ["d"]), stage((4, 6), ["e"])])], 3),
}


def run_and_collect(p: Plan, model: ModelSpec, tmp_path: Path, **kw) -> dict[str, torch.Tensor]:
    outcome = execute(p, None, "local", RunOptions(steps=STEPS, model=model, lr=LR, save_state=True,
                                                   env={"PYTHONPATH": TESTS}, timeout_s=90, run_dir=tmp_path, **kw))
    state: dict[str, torch.Tensor] = {}
    for f in outcome.state_files():
        state.update(torch.load(f))
    report = outcome.report
    assert report.source == "measured" and report.throughput > 0
    assert set(report.per_device) == set(p.devices)
    kinds = {e.kind for e in report.timeline}
    assert {"fwd", "bwd", "optimizer"} <= kinds
    assert len(report.metrics["loss_per_step"]) == STEPS
    return state


def assert_same_weights(got: dict, expected: dict, initial: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert not torch.equal(value, initial[key]) or key.endswith("bias"), f"{key} did not train"
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS))
def test_distributed_weights_equal_single_process(name, tmp_path):
    expected = reference_train(TOY, batch=12, steps=STEPS, lr=LR)
    initial = reference_train(TOY, batch=12, steps=0)
    got = run_and_collect(PLANS[name], TOY, tmp_path)
    assert_same_weights(got, expected, initial)


@pytest.mark.slow
def test_gpt2_tiny_tied_embeddings_across_stages(tmp_path):
    """A Hugging Face GPT-2 (embedding tied to the head) split over an uneven stage group and a last stage."""
    model = ModelSpec(name="gpt2-tiny", overrides={"n_layer": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                                   "attn_pdrop": 0.0}, seed=1)
    p = Plan(planner="hybrid", model="gpt2-tiny", cluster="test", num_layers=4, batch=6, microbatches=2, seq=8,
             pipelines=[PipelinePlan(stages=[stage((0, 2), ["a", "b"], [0.6, 0.4]), stage((2, 4), ["c"])])])
    expected = reference_train(model, batch=6, steps=STEPS, seq=8, lr=LR)
    initial = reference_train(model, batch=6, steps=0, seq=8)
    got = run_and_collect(p, model, tmp_path)
    assert_same_weights(got, expected, initial)


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_without_hanging(tmp_path):
    start = time.monotonic()
    with pytest.raises(WorkerFailed, match="injected failure|exit status 1"):
        execute(PLANS["pipedream"], None, "local", RunOptions(steps=3, model=TOY, env={"PYTHONPATH": TESTS},
                                                              timeout_s=60, run_dir=tmp_path,
                                                              hooks=["runtime_toy:CrashOnRankZero"]))
    assert time.monotonic() - start < 50
    assert "RuntimeError: injected failure" in (tmp_path / "error-rank0.txt").read_text()
