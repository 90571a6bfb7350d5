"""The LLM pipeline planner and its predictor: device choice, uneven splits, memory, links, baselines, errors."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgepool.catalog import get_device
from edgepool.cluster import Cluster, cluster_from_dict
from edgepool.device import Device
from edgepool.errors import SpecError
from edgepool.llm.planner import (LLMWorkload, best_single, even_split, memory_weighted_split, plan_llm, predict,
                                  stage_layer_ranges)
from edgepool.llm.profile import LLMProfile, measure_host, relative_speed, stage_time
from edgepool.plan import plan_from_dict
from edgepool.testbed.testbed import Emulation, emulated_cluster

GiB = 2**30
HOST_PEAK = 50e9
# SmolLM2-135M's shape
SMOL = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True)
WORKLOAD = LLMWorkload(requests=16, prompt_tokens=128, new_tokens=64)


@pytest.fixture(scope="module")
def profile() -> LLMProfile:
    """SmolLM2's shape with host times like a compute-bound host core (seconds = a + b * tokens)."""
    base = LLMProfile.from_config(SMOL, name="smol")
    return base.model_copy(update={"host_layer_s": (3e-4, 9e-5), "host_head_s": (2e-3, 9e-4),
                                   "host_flops": HOST_PEAK * 0.6, "host_measured": {"where": "test numbers"}})


def _host() -> Device:
    return Device(name="host-core", peak_flops={"fp32": HOST_PEAK}, memory_bytes=16 * GiB, memory_bandwidth=10e9,
                  cpu_cores=1, efficiency=0.6, description="a test host core")


def _emulated(cores: dict[str, float], bandwidth: float = 1e9 / 8, memory: dict[str, float] | None = None) -> Cluster:
    """A cluster as the testbed emulates it: every device is the host core scaled by its CPU share."""
    memory = memory or {}
    devices = [Device(name=n, peak_flops={"fp32": 1e10}, memory_bytes=int(memory.get(n, 4 * GiB)),
                      memory_bandwidth=1e10, cpu_cores=1) for n in cores]
    spec = Cluster.uniform(devices, bandwidth=bandwidth, latency_s=1e-4, name="lab")
    return emulated_cluster(spec, Emulation(cores=cores), _host())


def _check_cover(plan, layers: int):
    ranges = stage_layer_ranges(plan)
    assert ranges[0][0] == 0 and ranges[-1][1] == layers
    assert all(a < b for a, b in ranges)  # every stage holds at least one layer
    assert all(prev[1] == nxt[0] for prev, nxt in zip(ranges, ranges[1:]))  # contiguous
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(layers))  # every layer exactly once
    assert plan.stages[0].layers[0] == 0 and plan.stages[-1].layers[1] == layers + 2  # embedding and head
    plan_from_dict(plan.model_dump())  # a valid, serializable Plan


# ----------------------------------------------------------------------------- profile and time model
def test_profile_sizes_match_the_real_model():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    prof = LLMProfile.from_config(config)
    layer_params = sum(p.numel() for p in model.model.layers[0].parameters())
    assert prof.layer_param_bytes == layer_params * 4
    assert prof.embed_bytes == model.model.embed_tokens.weight.numel() * 4
    assert prof.head_bytes == (model.lm_head.weight.numel() + model.model.norm.weight.numel()) * 4
    assert prof.total_param_bytes == sum(p.numel() for p in model.parameters()) * 4
    assert prof.kv_bytes_per_token_layer == 2 * 2 * 16 * 4
    assert prof.head_flops_per_token == 2 * 300 * 64
    tied = LLMProfile.from_config(SMOL)
    assert tied.total_param_bytes == pytest.approx(134.5e6 * 4, rel=0.01)  # SmolLM2-135M


def test_stage_time_scales_with_the_emulated_share_and_the_work(profile):
    cluster = _emulated({"full": 1.0, "half": 0.5})
    full, half = cluster.devices["full"], cluster.devices["half"]
    assert relative_speed(profile, full) == pytest.approx(1.0)
    t_full = stage_time(profile, full, 10, False, False, 8)
    assert t_full == pytest.approx(10 * (3e-4 + 9e-5 * 8))  # the host measurement itself
    assert stage_time(profile, half, 10, False, False, 8) == pytest.approx(2 * t_full)
    assert stage_time(profile, full, 20, False, False, 8) == pytest.approx(2 * t_full)
    assert stage_time(profile, full, 10, True, False, 8) > t_full  # the head costs
    assert stage_time(profile, full, 10, False, False, 8, context=512) > t_full  # attention over the cache
    # a real device (not emulated) gets the roofline, whatever the profile measured
    nano = get_device("jetson-orin-nano")
    t = stage_time(profile, nano, 10, False, False, 1)
    weights = 10 * profile.layer_param_bytes / nano.memory_bandwidth
    assert weights <= t < 1.5 * weights  # one token: bound by reading the weights


def test_measure_host_fits_a_real_decoder_layer():
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    prof = measure_host(model, tokens=(1, 4, 16, 64), host=_host(), budget_s=0.4)
    a, b = prof.host_layer_s
    assert a >= 0 and b >= 0 and a + b * 64 > 0
    assert prof.host_head_s is not None and prof.host_flops == HOST_PEAK * 0.6
    assert prof.measured and prof.host_measured["when"] and len(prof.host_measured["layer_s"]) == 4
    assert torch.get_num_threads() >= 1


# ----------------------------------------------------------------------------- the planner
def test_four_unequal_devices_pipeline_beats_single_and_exo(profile):
    cluster = _emulated({"a": 1.0, "b": 0.8, "c": 0.6, "d": 0.5})
    plan = plan_llm(profile, cluster, WORKLOAD)
    single = best_single(profile, cluster, WORKLOAD)
    exo = memory_weighted_split(profile, cluster, workload=WORKLOAD)
    even = even_split(profile, cluster, workload=WORKLOAD)
    assert len(plan.stages) > 1 and plan.feasible
    assert plan.predicted["tokens_per_s"] >= single.predicted["tokens_per_s"] * 1.05
    assert plan.predicted["tokens_per_s"] >= exo.predicted["tokens_per_s"]
    assert plan.predicted["tokens_per_s"] >= even.predicted["tokens_per_s"]
    assert single.stages[0].devices == ["a"] and len(exo.stages) == len(even.stages) == 4
    for key in ("tokens_per_s", "single_stream_tokens_per_s", "ttft_s", "decode_step_s"):
        assert plan.predicted[key] > 0 and single.predicted[key] > 0 and exo.predicted[key] > 0
    _check_cover(plan, profile.num_layers)
    # uneven: the faster device carries more layers than the slower one
    counts = dict(zip(plan.devices, [b - a for a, b in stage_layer_ranges(plan)]))
    assert len(set(counts.values())) > 1
    # the shared predictor gives the plan's own figures back
    again = predict(plan, profile, cluster, WORKLOAD)
    assert again["tokens_per_s"] == pytest.approx(plan.predicted["tokens_per_s"])


def test_a_very_slow_device_is_left_out_with_a_reason(profile):
    cluster = _emulated({"a": 1.0, "b": 0.8, "c": 0.6, "slow": 0.05})  # 20x slower than a
    plan = plan_llm(profile, cluster, WORKLOAD)
    assert "slow" not in plan.devices and len(plan.stages) > 1
    reason = plan.notes["left_out"]["slow"]
    assert "slower" in reason and "lowers predicted tokens/s from" in reason
    assert set(plan.notes["left_out"]) == set(cluster.devices) - set(plan.devices)


@pytest.mark.parametrize("bandwidth", [1e9 / 8, 100e6 / 8, 10e6 / 8, 1e6 / 8])
def test_slow_links_never_predict_below_the_best_single_device(profile, bandwidth):
    cluster = _emulated({"a": 1.0, "b": 0.8, "c": 0.6, "d": 0.5}, bandwidth=bandwidth)
    plan = plan_llm(profile, cluster, WORKLOAD)
    single = best_single(profile, cluster, WORKLOAD)
    assert plan.predicted["tokens_per_s"] >= single.predicted["tokens_per_s"]
    if bandwidth <= 1e6 / 8:  # 1 Mbit/s: moving hidden states costs more than any split gains
        assert plan.devices == ["a"]
        assert all("link 1Mbps" in why for why in plan.notes["left_out"].values())


def test_slow_links_use_fewer_devices_than_fast_links(profile):
    fast = plan_llm(profile, _emulated({"a": 1.0, "b": 0.9, "c": 0.8, "d": 0.7}, bandwidth=10e9 / 8), WORKLOAD)
    slow = plan_llm(profile, _emulated({"a": 1.0, "b": 0.9, "c": 0.8, "d": 0.7}, bandwidth=5e6 / 8), WORKLOAD)
    assert len(slow.stages) < len(fast.stages)


def test_link_aware_order_keeps_fast_links_adjacent(profile):
    raw = {"name": "two-rooms", "devices": [{"name": n, "spec": {"peak_flops": {"fp32": 20e9}, "memory_bytes": "4GiB",
                                                                 "memory_bandwidth": "20GB/s", "cpu_cores": 1}}
                                            for n in ("a1", "a2", "b1", "b2")],
           "default_link": {"bandwidth": "20Mbps", "latency": "1ms"},
           "links": [{"between": ["a1", "a2"], "bandwidth": "10Gbps"}, {"between": ["b1", "b2"], "bandwidth": "10Gbps"},
                     {"between": ["a2", "b1"], "bandwidth": "10Gbps"}]}
    cluster = cluster_from_dict(raw)
    plan = plan_llm(LLMProfile.from_config(SMOL), cluster, WORKLOAD)
    order = plan.devices
    for x, y in zip(order, order[1:]):
        assert cluster.link(x, y).bandwidth >= 1e9, order  # never across a 20 Mbit/s link


def test_three_devices_and_uneven_splits(profile):
    cluster = _emulated({"a": 1.0, "b": 0.7, "c": 0.45})
    plan = plan_llm(profile, cluster, WORKLOAD)
    assert len(plan.stages) == 3
    _check_cover(plan, profile.num_layers)
    counts = [b - a for a, b in stage_layer_ranges(plan)]
    assert len(set(counts)) == 3  # three different layer counts
    exo = memory_weighted_split(profile, cluster, workload=WORKLOAD)
    even = even_split(profile, cluster, workload=WORKLOAD)
    assert [b - a for a, b in stage_layer_ranges(even)] == [10, 10, 10]
    _check_cover(exo, profile.num_layers)
    _check_cover(even, profile.num_layers)


def test_memory_weighted_split_follows_memory(profile):
    cluster = _emulated({"a": 1.0, "b": 1.0, "c": 1.0}, memory={"a": 2 * GiB, "b": 6 * GiB, "c": 4 * GiB})
    exo = memory_weighted_split(profile, cluster, workload=WORKLOAD)
    assert exo.devices == ["b", "c", "a"]
    assert [b - a for a, b in stage_layer_ranges(exo)] == [15, 10, 5]


def test_a_device_too_small_is_left_out_and_none_is_overloaded(profile):
    cluster = _emulated({"a": 1.0, "b": 0.8, "c": 0.6, "tiny": 1.0},
                        memory={"a": 0.75 * GiB, "b": 0.75 * GiB, "c": 0.75 * GiB, "tiny": 0.2 * GiB})
    plan = plan_llm(profile, cluster, WORKLOAD)
    assert plan.feasible and "tiny" not in plan.devices
    assert "does not fit" in plan.notes["left_out"]["tiny"] and "GiB" in plan.notes["left_out"]["tiny"]
    for d, used in plan.notes["memory_bytes"].items():
        assert used <= cluster.devices[d].memory_bytes * 0.9
    # no single 0.75 GiB device holds the model: the best single is infeasible, the planner still finds one
    assert not best_single(profile, cluster, WORKLOAD).feasible
    assert len(plan.stages) >= 2
    # exo's split ignores speed but respects nothing else: it may overload; the planner never does
    assert plan.predicted["fits_memory"] == 1.0


def test_memory_caps_an_uneven_split(profile):
    # the fastest device can hold only a few layers: it gets no more than fit
    cluster = _emulated({"fast": 1.0, "big": 0.6}, memory={"fast": 0.55 * GiB, "big": 8 * GiB})
    plan = plan_llm(profile, cluster, WORKLOAD)
    assert set(plan.devices) == {"fast", "big"}
    for d, used in plan.notes["memory_bytes"].items():
        assert used <= cluster.devices[d].memory_bytes * 0.9


def test_nothing_fits_says_so(profile):
    cluster = _emulated({"a": 1.0, "b": 1.0}, memory={"a": 0.3 * GiB, "b": 0.3 * GiB})
    plan = plan_llm(profile, cluster, WORKLOAD)
    assert not plan.feasible and "does not fit" in plan.infeasible_reason


def test_single_stream_prefers_one_device(profile):
    cluster = _emulated({"a": 1.0, "b": 0.8, "c": 0.6, "d": 0.5})
    one = LLMWorkload(requests=1, prompt_tokens=32, new_tokens=64)
    plan = plan_llm(profile, cluster, one)
    single = best_single(profile, cluster, one)
    assert plan.predicted["single_stream_tokens_per_s"] >= single.predicted["single_stream_tokens_per_s"]
    assert plan.devices == ["a"]


def test_overlapped_decoding_gains_more_from_a_pipeline(profile):
    cluster = _emulated({"a": 1.0, "b": 0.8, "c": 0.6, "d": 0.5})
    step = plan_llm(profile, cluster, WORKLOAD)
    overlap = plan_llm(profile, cluster, WORKLOAD, overlap=True)
    assert overlap.predicted["decode_step_s"] < step.predicted["decode_step_s"]
    assert overlap.predicted["tokens_per_s"] >= best_single(profile, cluster, WORKLOAD,
                                                            overlap=True).predicted["tokens_per_s"]


def test_random_clusters_never_below_single_or_baselines(profile):
    rng = random.Random(7)
    for trial in range(12):
        k = rng.randint(2, 6)
        cores = {f"d{i}": rng.choice([1.0, 0.7, 0.5, 0.3, 0.1]) for i in range(k)}
        memory = {n: rng.choice([0.5, 1, 4]) * GiB for n in cores}
        cluster = _emulated(cores, bandwidth=rng.choice([1e9 / 8, 100e6 / 8, 10e6 / 8]), memory=memory)
        wl = LLMWorkload(requests=rng.choice([1, 3, 16]), prompt_tokens=rng.choice([16, 128]), new_tokens=32)
        plan = plan_llm(profile, cluster, wl)
        if not plan.feasible:
            continue
        _check_cover(plan, profile.num_layers)
        for base in (best_single(profile, cluster, wl), memory_weighted_split(profile, cluster, workload=wl),
                     even_split(profile, cluster, workload=wl)):
            if base.feasible:
                assert plan.predicted["tokens_per_s"] >= base.predicted["tokens_per_s"] * (1 - 1e-9), (trial, base.planner)
        assert all(plan.notes["memory_bytes"][d] <= cluster.devices[d].memory_bytes * 0.9 for d in plan.devices)


def test_real_devices_use_the_roofline():
    prof = LLMProfile.from_config(SMOL)
    devices = [get_device(n).model_copy(update={"name": n}) for n in ("jetson-orin-nano", "rpi5", "rpi4")]
    cluster = Cluster.uniform(devices, bandwidth=1e9 / 8, latency_s=1e-3)
    plan = plan_llm(prof, cluster, WORKLOAD)
    assert plan.predicted["tokens_per_s"] >= best_single(prof, cluster, WORKLOAD).predicted["tokens_per_s"]
    assert plan.devices[0] == "jetson-orin-nano"
    assert "rpi4" in plan.notes["left_out"]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field,value", [("requests", 0), ("prompt_tokens", -1), ("new_tokens", "3"),
                                         ("requests", True), ("new_tokens", 2.5)])
def test_bad_workload_names_the_field(field, value):
    with pytest.raises(SpecError) as err:
        LLMWorkload(**{field: value})
    assert err.value.field == field and field in str(err.value)


def test_unknown_device_names_the_field(profile):
    cluster = _emulated({"a": 1.0, "b": 0.5})
    with pytest.raises(SpecError) as err:
        plan_llm(profile, cluster, WORKLOAD, devices=["a", "nope"])
    assert err.value.field == "devices" and "nope" in str(err.value)
    with pytest.raises(SpecError) as err:
        plan_llm(profile, cluster, {"requests": 4})
    assert err.value.field == "workload"
    restricted = plan_llm(profile, cluster, WORKLOAD, devices=["b"])
    assert restricted.devices == ["b"]
