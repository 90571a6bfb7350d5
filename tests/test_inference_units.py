"""Fast checks of the inference package: splits, sharded layers in one process, planner, simulator, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.device import Device
from edgepool.inference.collectives import SequenceLayout, split_counts
from edgepool.inference.planner import plan_inference, split_layers
from edgepool.inference.simulate import RequestShape, simulate_inference
from edgepool.inference.tensor_parallel import head_and_column_counts, model_family, shard_layer, shard_ranges
from edgepool.models import build_model
from edgepool.profile import profile_model


def _device(name: str, gflops: float, memory: float = 8 * 2**30) -> Device:
    return Device(name=name, peak_flops={"fp32": gflops * 1e9}, memory_bytes=int(memory),
                  memory_bandwidth=20e9, cpu_cores=1, efficiency=1.0)


def _cluster(speeds: dict[str, float], bandwidth: float = 1e9 / 8, memory: float = 8 * 2**30) -> Cluster:
    return Cluster.uniform([_device(n, s, memory) for n, s in speeds.items()], bandwidth=bandwidth, latency_s=1e-4)


@pytest.fixture(scope="module")
def bert_profile():
    return profile_model(build_model("bert-tiny", meta=True), 1, 64)


def test_split_counts_are_whole_proportional_and_complete():
    assert split_counts(12, [0.5, 0.3, 0.2]) == [6, 4, 2]
    counts = split_counts(7, [1, 1, 1])
    assert sum(counts) == 7 and max(counts) - min(counts) <= 1
    with pytest.raises(ValueError):
        split_counts(3, [0, 0])


def test_tiles_cover_every_row_once():
    layout = SequenceLayout((5, 3, 0, 9), tiles=3)
    rows = sorted(r for m in range(4) for k in range(3) for r in range(*layout.tile(m, k)))
    assert rows == list(range(17))
    assert layout.local_tile(1, 0)[0] == 0


@pytest.mark.parametrize("model", ["bert-tiny", "gpt2-tiny", "llama-tiny"])
def test_uneven_shards_sum_to_the_transformers_layer(model):
    torch.manual_seed(0)
    bundle = build_model(model)
    family = model_family(bundle)
    block = bundle.blocks[1]
    x = torch.randn(2, 9, bundle.hf_model.config.hidden_size)
    with torch.no_grad():
        expected = block(x)
        whole = shard_layer(block, family, bundle.hf_model.config, shard_ranges(*head_and_column_counts(bundle), [1.0])[0])
        torch.testing.assert_close(whole.forward_tensor(x, None), expected, atol=1e-5, rtol=1e-4)
        # three uneven members: their partial outputs of attention and MLP add up to the whole layer's
        ranges = shard_ranges(*head_and_column_counts(bundle), [0.6, 0.3, 0.1])
        members = [shard_layer(block, family, bundle.hf_model.config, r) for r in ranges]
        a_in = whole.norm1(x) if whole.prenorm else x
        attn = sum(m.attn.out_partial(m.attn.attend(*m.attn.project(a_in))) for m in members)
        full_attn = whole.attn.out_partial(whole.attn.attend(*whole.attn.project(a_in)))
        torch.testing.assert_close(attn, full_attn, atol=1e-5, rtol=1e-4)
        mlp = sum(m.mlp.partial(a_in) for m in members)
        torch.testing.assert_close(mlp, whole.mlp.partial(a_in), atol=1e-5, rtol=1e-4)


def test_planner_splits_by_speed_and_prefers_parallel_on_fast_links(bert_profile):
    cluster = _cluster({"a": 40, "b": 20, "c": 10, "d": 10}, bandwidth=10e9 / 8)
    plan = plan_inference(bert_profile, cluster, RequestShape(1, 64), strategy="tp")
    stage = plan.stages[0]
    assert stage.parallel in ("tensor", "tensor+sequence") and len(stage.devices) >= 2
    shares = dict(zip(stage.devices, stage.shares))
    assert shares["a"] > shares["b"]
    even = plan_inference(bert_profile, cluster, RequestShape(1, 64), strategy="even-tp")
    assert even.stages[0].shares == [0.25] * 4
    auto = plan_inference(bert_profile, cluster, RequestShape(1, 64))
    assert auto.predicted["latency_s"] <= min(c["latency_s"] for c in auto.notes["candidates"].values())


def test_slow_links_make_parallel_plans_slower(bert_profile):
    fast = _cluster({"a": 40, "b": 40}, bandwidth=1e9 / 8)
    slow = _cluster({"a": 40, "b": 40}, bandwidth=10e6 / 8)
    shape = RequestShape(1, 64)
    plan = plan_inference(bert_profile, fast, shape, strategy="tp")
    assert simulate_inference(plan, bert_profile, slow, shape=shape).latency_s > \
        simulate_inference(plan, bert_profile, fast, shape=shape).latency_s


def test_tiles_overlap_in_the_simulator(bert_profile):
    cluster = _cluster({"a": 0.05, "b": 0.05, "c": 0.05}, bandwidth=1e6 / 8)  # compute ~ communication
    shape = RequestShape(1, 64)
    plan = plan_inference(bert_profile, cluster, shape, strategy="tp")
    one = simulate_inference(plan, bert_profile, cluster, shape=shape, tiles=1).latency_s
    four = simulate_inference(plan, bert_profile, cluster, shape=shape, tiles=4).latency_s
    assert four < one


def test_memory_infeasible_plan_is_reported_not_chosen():
    profile = profile_model(build_model("gpt2-tiny", meta=True), 1, 1)
    weights = profile.total_param_bytes
    cluster = _cluster({"a": 10, "b": 10}, memory=weights * 0.3)
    plan = plan_inference(profile, cluster, RequestShape(1, 1, "decode", 16))
    assert not plan.feasible and "memory" in plan.infeasible_reason
    report = simulate_inference(plan, profile, cluster)
    assert not report.feasible


def test_pipeline_layers_follow_memory():
    profile = profile_model(build_model("gpt2-tiny", meta=True), 1, 1)
    total = profile.total_param_bytes
    cluster = Cluster.uniform([_device("big", 10, total * 2), _device("small", 10, total * 0.45)], bandwidth=1e8)
    ranges = split_layers(profile, cluster, ["small", "big"], {"small": 1.0, "big": 1.0}, CostModel())
    loads = [sum(l.param_bytes for l in profile.layers[a:b]) for a, b in ranges]
    assert loads[0] <= total * 0.45 * 0.9
    assert ranges[0][0] == 0 and ranges[-1][1] == len(profile.layers)


def test_cli_infer_plans_and_simulates_without_running(tmp_path):
    from edgepool.cli import app

    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["infer", "--cluster", "home", "--model", "bert-tiny", "--seq", "32",
                                      "--no-run", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["plan"]["kind"] == "inference" and data["simulated"]["source"] == "simulated"
    assert data["measured"] is None and out.exists()


def test_cli_reports_infeasible_and_rejects_bad_plan(tmp_path):
    from edgepool.cli import app

    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ndevices:\n  - {name: a, spec: {peak_flops: {fp32: 1000000000}, memory_bytes: 1000,"
                    " memory_bandwidth: 10GB/s, cpu_cores: 1}}\n")
    result = CliRunner().invoke(app, ["infer", "--cluster", str(spec), "--model", "bert-tiny", "--seq", "16"])
    assert result.exit_code == 2 and "INFEASIBLE" in result.output
    result = CliRunner().invoke(app, ["infer", "--cluster", "home", "--model", "bert-tiny", "--plan", "magic"])
    assert result.exit_code == 2 and result.output.startswith("error: --plan = 'magic'")  # one line, no traceback


def test_decode_step_with_costly_collectives_runs_on_one_device_or_a_pipeline():
    from edgepool.runtime.probes.comm import CommCosts

    profile = profile_model(build_model("gpt2-tiny", meta=True), 1, 1)
    cluster = _cluster({"a": 10, "b": 8, "c": 6}, bandwidth=100e6 / 8)
    shape = RequestShape(1, 1, "decode", 32)
    slow = CommCosts(allreduce_call_s={2: 3e-3, 3: 8e-3}, hop_s=4e-4)
    plan = plan_inference(profile, cluster, shape, comm=slow)
    assert plan.planner in ("single", "layer-pipeline"), plan.notes["candidate"]
    # with free collectives the same request is split: the choice follows the measured costs
    free = CommCosts(allreduce_call_s={2: 0.0, 3: 0.0}, allreduce_cpu_per_byte_s=0.0, p2p_message_cpu_s=0.0,
                     p2p_byte_cpu_s=0.0, p2p_phase_s=0.0, hop_s=0.0)
    fast = Cluster.uniform([_device(n, s) for n, s in {"a": 10, "b": 8, "c": 6}.items()], bandwidth=100e9 / 8)
    assert plan_inference(profile, fast, shape, comm=free).planner == "galaxy"


@pytest.mark.parametrize("seq,phase,bandwidth", [(64, "prefill", 1e9 / 8), (64, "prefill", 100e6 / 8),
                                                  (8, "prefill", 1e9 / 8), (1, "decode", 1e9 / 8)])
def test_planner_never_predicts_slower_than_even_tensor_parallelism(bert_profile, seq, phase, bandwidth):
    from edgepool.runtime.probes.comm import CommCosts

    profile = bert_profile if phase == "prefill" else profile_model(build_model("gpt2-tiny", meta=True), 1, 1)
    cluster = _cluster({"a": 12, "b": 10, "c": 7, "d": 5}, bandwidth=bandwidth)
    shape = RequestShape(1, seq if phase == "prefill" else 1, phase, 0 if phase == "prefill" else 32)
    for comm in (CommCosts(), CommCosts(core_flops=12e9)):
        auto = plan_inference(profile, cluster, shape, comm=comm)
        even = plan_inference(profile, cluster, shape, strategy="even-tp", comm=comm)
        assert auto.predicted["latency_s"] <= even.predicted["latency_s"]
        assert auto.predicted["latency_s"] == pytest.approx(
            simulate_inference(auto, profile, cluster, shape=shape, comm=comm).latency_s)


def test_message_cpu_costs_slow_a_slower_device_more(bert_profile):
    from edgepool.runtime.probes.comm import CommCosts

    cluster = _cluster({"a": 20, "b": 5}, bandwidth=1e9 / 8)
    shape = RequestShape(1, 64)
    plan = plan_inference(bert_profile, cluster, shape, strategy="tp")
    stage = plan.stages[0].model_copy(update={"parallel": "tensor+sequence"})
    plan = plan.model_copy(update={"pipelines": [plan.pipelines[0].model_copy(update={"stages": [stage]})],
                                   "notes": {**plan.notes, "tiles": 1}})
    layers = len(bert_profile.layers) - 2
    cheap = CommCosts(p2p_message_cpu_s=0.0, p2p_byte_cpu_s=0.0, allreduce_cpu_per_byte_s=0.0, core_flops=20e9)
    costly = CommCosts(p2p_message_cpu_s=1e-3, p2p_byte_cpu_s=1e-9, allreduce_cpu_per_byte_s=1e-9, core_flops=20e9)
    t0 = simulate_inference(plan, bert_profile, cluster, shape=shape, comm=cheap).latency_s
    t1 = simulate_inference(plan, bert_profile, cluster, shape=shape, comm=costly).latency_s
    # 8 messages a layer (2 x all-gather + reduce-scatter, send + receive), 1 ms of the probed core each,
    # take 4x longer on b (5 of the probed core's 20 GFLOP/s): at least that much is added
    assert t1 - t0 >= layers * 8 * 1e-3 * 4 * 0.99


def test_probe_results_fit_into_comm_costs():
    from edgepool.runtime.probes.comm import fit_comm_costs

    def rank(dev, tiny_ar, big_ar, tiny_p2p, big_p2p):
        return {"device": dev, "hop_s": 5e-4,
                "allreduce": {"2:tiny": {"wall_s": tiny_ar, "cpu_s": 1e-3, "bytes": 4000},
                              "2:big": {"wall_s": big_ar, "cpu_s": 1e-3 + 2e-9 * 1_000_000, "bytes": 1_004_000}},
                "p2p": {"tiny": {"wall_s": tiny_p2p, "cpu_s": 2 * 1e-4 + 4000 * 2 * 1e-9, "messages": 2, "bytes": 8000},
                        "big": {"wall_s": big_p2p, "cpu_s": 2 * 1e-4 + 808_000 * 1e-9, "messages": 2,
                                "bytes": 808_000}}}

    costs = fit_comm_costs([rank("a", 2e-3, 9e-3, 1e-3, 4e-3), rank("b", 3e-3, 9e-3, 2e-3, 4e-3)], 1e10, "test")
    assert costs.allreduce_call_s[2] == pytest.approx(3e-3)  # the slowest member's
    assert costs.allreduce_cpu_per_byte_s == pytest.approx(2e-9)
    assert costs.p2p_byte_cpu_s == pytest.approx(1e-9)
    assert costs.p2p_message_cpu_s == pytest.approx(1e-4)
    assert costs.p2p_phase_s == pytest.approx(2e-3) and costs.hop_s == pytest.approx(5e-4)
    assert costs.allreduce_fixed_s(4) == pytest.approx(3e-3 / 2 * 6)  # extrapolated by ring steps


@pytest.mark.parametrize("strategy", ["tp", "even-tp"])
def test_a_shared_medium_slows_the_simulated_collectives_as_in_training(bert_profile, strategy):
    """One network model (`edgepool.network`): pair transfers and all-reduces on one Wi-Fi share its capacity."""
    devices = [_device(n, s) for n, s in {"a": 10, "b": 8, "c": 6}.items()]
    free = Cluster.uniform(devices, bandwidth=100e6 / 8, latency_s=1e-4)
    shared = Cluster.uniform(devices, bandwidth=100e6 / 8, latency_s=1e-4, medium="wifi", medium_capacity=100e6 / 8)
    plan = plan_inference(bert_profile, free, RequestShape(1, 64), strategy=strategy)
    assert len(plan.devices) > 1
    alone, on_air = (simulate_inference(plan, bert_profile, c).metrics["stages"][0]["comm_s"] for c in (free, shared))
    assert on_air > alone > 0
