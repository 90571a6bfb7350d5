"""The simulator against hand-computed timelines, memory feasibility, report fields and plots."""
from __future__ import annotations


import pytest

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.device import Device
from edgepool.elastic.sim_events import simulate_elastic
from edgepool.errors import SpecError
from edgepool.events import DeviceFailure, LinkChange
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.planners.costing import estimate
from edgepool.profile import LayerProfile, ModelProfile
from edgepool.schedule import stage_actions
from edgepool.simulator import simulate

GFLOP = 1e9


def device(name: str, memory: int = 2**34, flops: float = GFLOP) -> Device:
    # efficiency 1 and an enormous memory bandwidth: a layer takes exactly flops / peak seconds
    return Device(name=name, peak_flops={"fp32": flops}, memory_bytes=memory, memory_bandwidth=1e18, cpu_cores=4,
                  efficiency=1.0, power_idle_w=1.0, power_max_w=11.0)


def profile(layers: int, out_bytes: int = 0, params: int = 0, saved: int = 0) -> ModelProfile:
    """Each layer: 1 GFLOP forward, 2 GFLOP backward per sample."""
    return ModelProfile(model="toy", batch=1, seq=None, layers=[
        LayerProfile(name=f"{i}", fwd_flops=GFLOP, bwd_flops=2 * GFLOP, param_bytes=params, output_bytes=out_bytes,
                     saved_bytes=saved, input_bytes=0) for i in range(layers)])


def cluster(n: int, bandwidth: float = 1e6, medium_capacity: float | None = None, **kw) -> Cluster:
    devs = [device(f"d{i}", **kw) for i in range(n)]
    return Cluster.uniform(devs, bandwidth=bandwidth, latency_s=0.0, name="toy",
                           medium="air" if medium_capacity else None, medium_capacity=medium_capacity)


def pipeline_plan(n: int, microbatches: int, schedule: str, layers_per_stage: int = 1) -> Plan:
    stages = [StagePlan(layers=(s * layers_per_stage, (s + 1) * layers_per_stage), devices=[f"d{s}"], shares=[1.0])
              for s in range(n)]
    return Plan(planner="hand", model="toy", cluster="toy", num_layers=n * layers_per_stage, batch=microbatches,
                microbatches=microbatches, schedule=schedule, pipelines=[PipelinePlan(stages=stages)])


def spans(report, device, kind):
    return [(round(e.start, 9), round(e.end, 9)) for e in report.timeline if e.device == device and e.kind == kind]


def test_two_stage_1f1b_matches_hand_timeline():
    # F = 1 s, B = 2 s per stage and micro-batch (1 sample); a 0.5 MB activation over 1 MB/s = 0.5 s each way
    prof, cl = profile(2, out_bytes=500_000), cluster(2, bandwidth=1e6)
    report = simulate(pipeline_plan(2, 2, "1f1b"), cl, CostModel(), prof)
    assert spans(report, "d0", "fwd") == [(0, 1), (1, 2)]
    assert spans(report, "d1", "fwd") == [(1.5, 2.5), (4.5, 5.5)]  # mb 1 waits for d1's backward of mb 0
    assert spans(report, "d1", "bwd") == [(2.5, 4.5), (5.5, 7.5)]
    assert spans(report, "d0", "bwd") == [(5, 7), (8, 10)]  # gradients arrive 0.5 s after d1's backward
    assert report.iteration_time_s == pytest.approx(10.0)
    assert report.throughput == pytest.approx(2 / 10.0)
    assert report.source == "simulated" and report.feasible


def test_three_stage_gpipe_matches_hand_timeline():
    prof, cl = profile(3, out_bytes=500_000), cluster(3, bandwidth=1e6)
    report = simulate(pipeline_plan(3, 2, "gpipe"), cl, CostModel(), prof)
    assert spans(report, "d1", "fwd") == [(1.5, 2.5), (2.5, 3.5)]
    assert spans(report, "d2", "fwd") == [(3, 4), (4, 5)]
    assert spans(report, "d2", "bwd") == [(5, 7), (7, 9)]  # GPipe: backward of the last micro-batch first
    assert spans(report, "d1", "bwd") == [(7.5, 9.5), (9.5, 11.5)]
    assert spans(report, "d0", "bwd") == [(10, 12), (12, 14)]
    assert report.iteration_time_s == pytest.approx(14.0)
    # GPipe holds both micro-batches in flight on every stage
    assert report.metrics["in_flight"] == {"0.0": 2, "0.1": 2, "0.2": 2}


def test_three_stage_1f1b_without_communication_agrees_with_estimate():
    prof, cl = profile(3), cluster(3)
    plan = pipeline_plan(3, 3, "1f1b")
    report = simulate(plan, cl, CostModel(), prof)
    # (M + S - 1) (F + B) for equal stages and free transfers
    assert report.iteration_time_s == pytest.approx((3 + 3 - 1) * 3.0)
    assert estimate(plan, prof, CostModel(), cl).iteration_time_s == pytest.approx(report.iteration_time_s)
    assert report.metrics["in_flight"] == {"0.0": 3, "0.1": 2, "0.2": 1}  # 1F1B keeps S - s in flight


def test_stage_order_1f1b_and_gpipe():
    def stage_order(schedule, stage, num_stages, microbatches):  # the order the simulator replays
        return [(a.kind, a.microbatch) for a in stage_actions(schedule, num_stages, stage, microbatches)]

    assert stage_order("1f1b", 0, 2, 3) == [("fwd", 0), ("fwd", 1), ("bwd", 0), ("fwd", 2), ("bwd", 1), ("bwd", 2)]
    assert stage_order("gpipe", 1, 2, 2) == [("fwd", 0), ("fwd", 1), ("bwd", 1), ("bwd", 0)]


def test_a_plan_for_another_cluster_model_or_kind_is_refused_with_the_field():
    prof, plan = profile(2), pipeline_plan(2, 1, "1f1b")
    with pytest.raises(SpecError, match="plan.pipelines.stages.devices = 'd1'.*another cluster"):
        simulate(plan, cluster(1), CostModel(), prof)
    with pytest.raises(SpecError, match="plan.num_layers = 2.*accepted: 3.*another model than 'toy'"):
        simulate(plan, cluster(2), CostModel(), profile(3))
    with pytest.raises(SpecError, match="plan.kind = 'inference'.*accepted: training"):
        simulate(plan.model_copy(update={"kind": "inference"}), cluster(2), CostModel(), prof)

def test_shared_medium_serializes_transfers():
    prof = profile(3, out_bytes=1_000_000)
    free = simulate(pipeline_plan(3, 4, "1f1b"), cluster(3, bandwidth=1e6), CostModel(), prof)
    shared = simulate(pipeline_plan(3, 4, "1f1b"), cluster(3, bandwidth=1e6, medium_capacity=1e6), CostModel(), prof)
    assert shared.iteration_time_s > free.iteration_time_s
    sends = sorted((e.start, e.end) for e in shared.timeline if e.kind == "send" and e.device in ("d0", "d1", "d2"))
    # on one medium no two transfers overlap
    assert all(b[0] >= a[1] - 1e-9 for a, b in zip(sends, sends[1:]))


def test_data_parallel_stage_allreduce_and_energy():
    prof = profile(2, params=4_000_000)
    cl = cluster(2, bandwidth=1e6)
    plan = Plan(planner="hand", model="toy", cluster="toy", num_layers=2, batch=2, microbatches=1,
                pipelines=[PipelinePlan(stages=[StagePlan(layers=(0, 2), devices=["d0", "d1"], shares=[0.5, 0.5])])])
    report = simulate(plan, cl, CostModel(optimizer="sgd"), prof)
    allreduce = [e for e in report.timeline if e.kind == "allreduce"]
    # ring all-reduce of 8 MB of gradients between 2 devices over 1 MB/s: 2 (n-1)/n * 8 MB / 1 MB/s = 8 s
    assert allreduce and allreduce[0].end - allreduce[0].start == pytest.approx(8.0)
    for stats in report.per_device.values():
        assert 0 < stats.utilization <= 1
        assert stats.energy_j > 0 and stats.energy_source == "modelled"


def test_memory_over_limit_is_infeasible_not_run():
    prof = profile(2, saved=1_000_000_000)  # 1 GB saved per sample per layer
    cl = cluster(2, memory=2**30)
    report = simulate(pipeline_plan(2, 2, "gpipe"), cl, CostModel(), prof)
    assert not report.feasible and report.throughput is None
    assert "d0" in report.infeasible_reason and "GiB" in report.infeasible_reason
    assert report.per_device["d0"].peak_memory_bytes > report.per_device["d0"].memory_limit_bytes


def test_failure_events_forward_to_the_elastic_simulation():
    prof, cl = profile(2), cluster(2)
    plan = pipeline_plan(2, 2, "gpipe")

    def replan(devices):  # both layers on the first survivor
        stage = StagePlan(layers=(0, 2), devices=[devices[0]], shares=[1.0])
        return plan.model_copy(update={"pipelines": [PipelinePlan(stages=[stage])]})
    base = simulate(plan, cl, CostModel(), prof)
    report = simulate_elastic(plan, cl, CostModel(), prof, events=[DeviceFailure("d1", 25.0)], replan=replan,
                              duration_s=100.0, detection_s=1.0)
    timeline = report.metrics["events"]
    assert [s["kind"] for s in timeline["segments"]] == ["train", "recovery", "train"]
    assert timeline["segments"][-1]["devices"] == ["d0"]
    # the same segments as typed timeline events, one per device and segment
    assert [(e.device, e.kind, e.start, e.end) for e in report.timeline] == [
        (d, s["kind"], s["start_s"], s["end_s"]) for s in timeline["segments"] for d in s["devices"]]
    assert [(e.device, e.kind) for e in report.timeline] == [("d0", "train"), ("d1", "train"), ("d0", "recovery"),
                                                              ("d0", "train")]
    assert report.source == "simulated" and "device event" in report.where
    assert report.metrics["throughput_before"] == pytest.approx(base.throughput)
    assert report.metrics["throughput_after"] < base.throughput  # one device does both stages' work now
    assert 0 < report.throughput < base.throughput
    with pytest.raises(NotImplementedError, match="link changes"):
        simulate_elastic(plan, cl, CostModel(), prof, events=[LinkChange("d0", "d1", 1e3, 1.0)], replan=replan)
    with pytest.raises(SpecError, match="replan"):  # "hand" is no registered planner that could re-plan
        simulate_elastic(plan, cl, CostModel(), prof, events=[DeviceFailure("d1", 5.0)])


def test_multi_pipeline_includes_cross_pipeline_allreduce():
    prof = profile(2, params=1_000_000)
    cl = cluster(4, bandwidth=1e6)
    pipes = [PipelinePlan(stages=[StagePlan(layers=(0, 1), devices=[f"d{2 * p}"], shares=[1.0]),
                                  StagePlan(layers=(1, 2), devices=[f"d{2 * p + 1}"], shares=[1.0])],
                          batch_share=0.5) for p in range(2)]
    plan = Plan(planner="hand", model="toy", cluster="toy", num_layers=2, batch=4, microbatches=2, pipelines=pipes)
    report = simulate(plan, cl, CostModel(optimizer="sgd"), prof)
    cross = [e for e in report.timeline if e.kind == "allreduce"]
    assert {e.device for e in cross} == {"d0", "d1", "d2", "d3"}
    assert report.iteration_time_s == pytest.approx(estimate(plan, prof, CostModel(optimizer="sgd"),
                                                             cl).iteration_time_s, rel=0.05)


def test_gantt_and_pareto_are_written(tmp_path):
    from edgepool.plotting import draw_gantt, draw_pareto, pareto_front
    prof, cl = profile(2, out_bytes=500_000), cluster(2)
    a = simulate(pipeline_plan(2, 2, "1f1b"), cl, CostModel(), prof)
    b = simulate(pipeline_plan(2, 2, "gpipe"), cl, CostModel(), prof)
    out = draw_gantt([a, b], tmp_path / "g.png")
    assert out.stat().st_size > 1000
    assert pareto_front([(1, 1), (2, 3), (3, 2)]) == [0, 1]
    assert draw_pareto([(1, 1, "a"), (2, 3, "b"), (3, 2)], tmp_path / "p.png").stat().st_size > 1000


def test_tied_parameters_are_all_reduced_between_the_stages_that_share_them():
    # 3 layers, the first and last share 4 MB of weights (a tied embedding and head) over 1 MB/s links
    from edgepool.profile import SharedParameters

    prof, cl = profile(3), cluster(3, bandwidth=1e6)
    prof.layers[0].param_bytes = 4_000_000
    prof.shared = [SharedParameters(blocks=(0, 2), param_bytes=4_000_000)]
    plan = pipeline_plan(3, 1, "1f1b")
    report = simulate(plan, cl, CostModel(optimizer="sgd"), prof)
    ring = 2 * (2 - 1) / 2 * 4_000_000 / 1e6  # two-member ring all-reduce: 4 s
    assert spans(report, "d0", "allreduce") == spans(report, "d2", "allreduce")
    (start, end), = spans(report, "d0", "allreduce")
    assert end - start == pytest.approx(ring)
    assert start == pytest.approx(max(e for _, e in spans(report, "d0", "bwd")))  # d0 finishes last
    assert spans(report, "d1", "allreduce") == []  # the middle stage holds none of them
    predicted = estimate(plan, prof, CostModel(optimizer="sgd"), cl).iteration_time_s
    assert report.iteration_time_s == pytest.approx(predicted)
    untied = simulate(plan, cl, CostModel(optimizer="sgd"), profile(3))
    assert report.iteration_time_s > untied.iteration_time_s + ring - 0.1  # optimizer on 4 MB adds a little


def test_profiles_record_tied_embedding_and_head():
    from edgepool.models import build_model
    from edgepool.profile import profile_model

    bundle = build_model("gpt2-tiny", meta=False)
    prof = profile_model(bundle, batch=1, seq=8)
    (group,) = prof.shared
    assert group.blocks == (0, len(bundle.blocks) - 1)
    wte = bundle.hf_model.get_input_embeddings().weight
    assert group.param_bytes == wte.numel() * wte.element_size()


def test_message_overhead_is_charged_per_pass_and_neighbour():
    # 3 stages: the middle one receives and sends on each pass (2 messages), the ends one each
    from edgepool.planners.costing import pipeline_costs

    prof, cl, plan = profile(3), cluster(3), pipeline_plan(3, 2, "1f1b")
    base = pipeline_costs(plan, prof, CostModel(), cl)[0].stages
    overhead = CostModel(message_overhead_s={"d0": 0.1, "d1": 0.1, "d2": 0.1})
    charged = pipeline_costs(plan, prof, overhead, cl)[0].stages
    extra = [round(c.fwd_s - b.fwd_s, 9) for c, b in zip(charged, base)]
    assert extra == [0.1, 0.2, 0.1]
    assert [round(c.bwd_s - b.bwd_s, 9) for c, b in zip(charged, base)] == extra
    slower = simulate(plan, cl, CostModel(message_overhead_s={"d1": 0.1}), prof)
    assert slower.iteration_time_s > simulate(plan, cl, CostModel(), prof).iteration_time_s
