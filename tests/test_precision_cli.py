"""`edgepool precision profile|place|eval` on the real digits task (trained in a few seconds), and the workbench."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgepool.cli import app
from edgepool.precision.experiment import profile_units
from edgepool.precision.tasks import Batch, PrecisionTask, Split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("precision-cache")


def invoke(*args):
    result = CliRunner().invoke(app, ["precision", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_profile_lists_every_unit_with_measured_drops(cache):
    data = json.loads(invoke("profile", "--model", "digits-cnn", "--device", "phone-snapdragon-8-gen-3",
                             "--cache", str(cache), "--json"))
    assert [u["unit"] for u in data["units"]] == ["conv1", "conv2", "conv3", "fc1", "head"]
    for unit in data["units"]:
        assert unit["mflop"] > 0 and unit["measured_fp32_ms_here"] > 0
        assert set(unit["simulated_ms"]) == {"cpu:fp32", "acc:int8", "acc:fp16"}
        assert set(unit["drop_points"]) == {"int8", "fp16"}
    assert data["validation_accuracy"] > 0.9


def test_place_writes_a_placement_that_keeps_the_floor(cache, tmp_path):
    out = tmp_path / "placement.json"
    data = json.loads(invoke("place", "--model", "digits-cnn", "--device", "rpi4-coral-usb", "--accuracy-floor",
                             "1", "--policy", "oracle", "--cache", str(cache), "--out", str(out), "--json"))
    measured = data["measured"]
    assert measured["validation_accuracy"] >= measured["all_cpu_validation_accuracy"] - 0.01 - 1e-9
    assert json.loads(out.read_text())["placement"]["targets"][0]["side"] in ("cpu", "accelerator")
    assert data["simulated"]["time_ms"] > 0
    table = invoke("place", "--model", "digits-cnn", "--device", "rpi4-coral-usb", "--cache", str(cache))
    assert "conv1" in table and "simulated:" in table and "measured:" in table


def test_eval_draws_the_pareto_plot(cache, tmp_path):
    out = invoke("eval", "--model", "digits-cnn", "--device", "rpi5-hailo-8l", "--accuracy-floor", "1",
                 "--rl-timesteps", "0", "--cache", str(cache), "--out", str(tmp_path))
    assert "mlmp min-time" in out and "oracle" in out and "input-dependent" in out
    assert (tmp_path / "precision-digits-cnn-rpi5-hailo-8l.png").stat().st_size > 10_000
    rows = json.loads((tmp_path / "precision-digits-cnn-rpi5-hailo-8l.json").read_text())["rows"]
    assert {r["policy"] for r in rows} >= {"all-cpu", "all-accelerator", "ours (lagrangian)", "oracle"}


def test_profiling_leaves_batch_norm_statistics_alone():
    units = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.randn(8, 1, 6, 6)
    units(x)
    split = Split([Batch(x, torch.zeros(8, dtype=torch.long))])
    task = PrecisionTask("toy", units, ["conv", "bn", "flat", "fc"], split, split, split, 3, "random")
    before = {k: v.clone() for k, v in units.state_dict().items()}
    profile_units(task, batch=4)
    assert all(torch.equal(before[k], v) for k, v in units.state_dict().items())
