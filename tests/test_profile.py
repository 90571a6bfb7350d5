import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgepool.cli import app
from edgepool.models import build_model, bundle_from_module
from edgepool.profile import ModelProfile, profile_model


def test_linear_flops_and_saved_bytes_by_hand():
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    prof = profile_model(bundle_from_module(net, torch.randn(1, 64)), batch=4)
    first = prof.layers[0]
    assert first.fwd_flops == 2 * 4 * 64 * 32
    assert first.bwd_flops == 2 * 2 * 4 * 64 * 32  # grad of input and of weight
    assert first.param_bytes == (64 * 32 + 32) * 4
    assert first.output_bytes == 4 * 32 * 4
    assert first.saved_bytes == 4 * 64 * 4  # the input, not the weight
    assert prof.layers[1].fwd_flops == 0


def test_gpt2_forward_flops_near_two_params_per_token():
    bundle = build_model("gpt2", meta=True)
    tokens = 128
    prof = profile_model(bundle, batch=1, seq=tokens)
    dense = 2 * bundle.num_parameters() * tokens
    attention = 2 * 2 * 12 * tokens * tokens * 768  # QK^T and AV in 12 layers
    assert abs(prof.total_fwd_flops - (dense + attention)) / (dense + attention) < 0.05


def test_resnet50_forward_flops_match_published_4_1_gmacs():
    prof = profile_model(build_model("resnet50", meta=True), batch=1)
    assert abs(prof.total_fwd_flops - 8.2e9) / 8.2e9 < 0.05


def test_profile_scales_with_batch_and_round_trips_json():
    bundle = build_model("gpt2-tiny")
    p1, p4 = profile_model(bundle, 1, 16), profile_model(bundle, 4, 16)
    assert p4.total_fwd_flops == pytest.approx(4 * p1.total_fwd_flops)
    assert ModelProfile.from_dict(json.loads(p4.to_json())).total_fwd_flops == p4.total_fwd_flops


def test_measured_profile_has_times_and_meta_cannot_be_measured():
    prof = profile_model(build_model("gpt2-tiny"), 2, 16, measure=True, repeats=1)
    assert all(l.fwd_time_s is not None and l.fwd_time_s >= 0 for l in prof.layers)
    with pytest.raises(ValueError, match="meta"):
        profile_model(build_model("llama-2-7b"), 1, 8, measure=True)


def test_profile_command_json_names_total_forward_flops():
    result = CliRunner().invoke(app, ["profile", "resnet50", "--batch", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    key = next(k for k in data if "total" in k and "flops" in k)
    assert abs(data[key] - 8.2e9) / 8.2e9 < 0.05
