import copy

import pytest
import torch

from edgepool.catalog import get_device
from edgepool.cluster import Link
from edgepool.costmodel import CostModel
from edgepool.local_device import measure_local_device, torch_threads
from edgepool.models import build_model
from edgepool.profile import profile_model


@pytest.fixture(scope="module")
def gpt2_profile():
    return profile_model(build_model("gpt2", meta=True), batch=1, seq=128)


def test_roofline_is_the_larger_of_compute_and_memory():
    dev = get_device("jetson-orin-nano")
    cost = CostModel()
    compute_bound = cost.compute_time(1e12, 1.0, dev)
    assert compute_bound == pytest.approx(1e12 / (dev.peak("fp32") * dev.efficiency))
    memory_bound = cost.compute_time(1.0, 68e9, dev)
    assert memory_bound == pytest.approx(1.0)


def test_faster_device_faster_and_fp16_faster_on_tensor_cores(gpt2_profile):
    n = len(gpt2_profile)
    pi, orin = get_device("rpi4"), get_device("jetson-agx-orin")
    t_pi = CostModel().layers_time(gpt2_profile, 0, n, pi, 8, "fwdbwd")
    t_orin = CostModel().layers_time(gpt2_profile, 0, n, orin, 8, "fwdbwd")
    t_orin16 = CostModel(precision="fp16").layers_time(gpt2_profile, 0, n, orin, 8, "fwdbwd")
    assert t_pi > 10 * t_orin > 10 * t_orin16 / 10 and t_orin16 < t_orin
    slow_mode = orin.mode("15W")
    assert CostModel().layers_time(gpt2_profile, 0, n, orin, 8, "fwd", mode=slow_mode) > \
        CostModel().layers_time(gpt2_profile, 0, n, orin, 8, "fwd")


def test_training_memory_counts_weights_grads_adam_and_in_flight_activations(gpt2_profile):
    n = len(gpt2_profile)
    cost = CostModel(optimizer="adam")
    weights = gpt2_profile.total_param_bytes
    saved = sum(l.saved_bytes for l in gpt2_profile.layers)
    one = cost.training_memory(gpt2_profile, 0, n, microbatch=1, in_flight=1)
    three = cost.training_memory(gpt2_profile, 0, n, microbatch=1, in_flight=3)
    assert one >= 4 * weights + saved
    assert three - one == pytest.approx(2 * saved)
    assert CostModel(optimizer="sgd").training_memory(gpt2_profile, 0, n, 1) < one


def test_transfer_shared_medium_and_allreduce():
    link = Link(bandwidth=12.5e6, latency_s=0.002)
    assert CostModel.transfer_time(12.5e6, link) == pytest.approx(1.002)
    assert CostModel.transfer_time(12.5e6, link, sharing=2) == pytest.approx(2.002)
    assert CostModel.transfer_time(12.5e6, Link(125e6, 0.0, "wifi"), medium_capacity=12.5e6) == pytest.approx(1.0)
    assert CostModel.allreduce_time(1e6, 4, link) == pytest.approx(6 * 0.002 + 1.5 * 1e6 / 12.5e6)
    assert CostModel.allreduce_time(1e6, 1, link) == 0


def test_energy_is_power_times_time():
    dev = get_device("jetson-orin-nano")
    assert CostModel().energy(dev, busy_s=2, idle_s=1) == pytest.approx(2 * dev.power_max_w + dev.power_idle_w)
    assert CostModel.power(dev, 0.5, dev.mode("7W")) == pytest.approx(dev.power_idle_w + (7 - dev.power_idle_w) / 2)


def test_bad_precision_and_optimizer_are_named():
    with pytest.raises(ValueError, match="fp8.*fp32"):
        CostModel(precision="fp8")
    with pytest.raises(ValueError, match="lion.*adam"):
        CostModel(optimizer="lion")


def _fastest_of(profiles):
    """Each layer's best time over several profiles of the same model and batch."""
    best = copy.deepcopy(profiles[0])
    for i, layer in enumerate(best.layers):
        layer.fwd_time_s = min(p.layers[i].fwd_time_s for p in profiles)
        layer.bwd_time_s = min(p.layers[i].bwd_time_s for p in profiles)
    return best


def test_calibrated_roofline_predicts_measured_times_here():
    """Calibrate on one batch size of a measured model, predict another batch size on this machine.

    One torch thread, best-of-5 layer times, and the two batch sizes profiled in alternation three times
    (each layer's best kept): on a 2-core host a burst of other work otherwise lands on one batch size only.
    """
    torch.manual_seed(0)
    with torch_threads(1):
        local = measure_local_device().model_copy(update={"name": "local-1-thread"})
        bundle = build_model("resnet18", num_classes=10, image_size=64)
        rounds = [(profile_model(bundle, batch=8, measure=True, repeats=5),
                   profile_model(bundle, batch=16, measure=True, repeats=5)) for _ in range(3)]
    small = _fastest_of([s for s, _ in rounds])
    large = _fastest_of([l for _, l in rounds])
    cost = CostModel().calibrate(small, local)
    assert 0 < cost.efficiency_of(local) <= 1
    measured = sum(l.fwd_time_s + l.bwd_time_s for l in large.layers)
    predicted = cost.layers_time(small, 0, len(small), local, 16, "fwdbwd")
    assert abs(predicted - measured) / measured < 0.5, (predicted, measured)
