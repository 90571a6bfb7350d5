"""Elastic training: failure parsing, block sources, the simulator's recovery model, and real multi-process
runs where a worker is killed with SIGKILL mid-iteration or a device joins."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgepool.cli.elastic import parse_failure
from edgepool.elastic.handover import block_sources, block_transfers
from edgepool.elastic.recovery import ElasticRun, FailureSpec, JoinSpec, Supervision, Training
from edgepool.elastic.strategy import CheckpointRestart, PipelineReplay
from edgepool.errors import SpecError
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.runtime import ModelSpec, reference_train
from edgepool.runtime.layout import split_counts

TESTS = str(Path(__file__).parent)
TOY = ModelSpec(factory="runtime_toy:tied_mlp", kwargs={"width": 16, "depth": 6}, seed=3)
LR, BATCH = 0.2, 12


def pipeline(devices: list[str], layers: int = 6, batch: int = BATCH, microbatches: int = 3) -> Plan:
    """Equal contiguous stages, one device each (what the gpipe planner builds), for any device list."""
    stages, start = [], 0
    for d, n in zip(devices, split_counts(layers, [1.0] * len(devices))):
        stages.append(StagePlan(layers=(start, start + n), devices=[d], shares=[1.0]))
        start += n
    return Plan(planner="gpipe", model="tied-mlp", cluster="test", num_layers=layers, batch=batch,
                microbatches=microbatches, pipelines=[PipelinePlan(stages=stages)])


def test_parse_failure_accepts_device_at_step_and_names_the_field():
    assert parse_failure("jetson@3") == FailureSpec("jetson", 3)
    with pytest.raises(SpecError, match="--fail"):
        parse_failure("jetson-3")


def test_device_at_is_read_one_way_for_steps_and_seconds_and_errors_name_the_callers_field():
    from edgepool.cli.elastic import parse_events
    from edgepool.events import DeviceFailure, DeviceJoin, parse_device_at, seconds_number, step_number

    assert parse_device_at("pi@2", step_number, field="failures", accepted="DEVICE@STEP") == ("pi", 2)
    assert parse_device_at(" pi@12.5", seconds_number, field="events", accepted="DEVICE@SECONDS") == ("pi", 12.5)
    for text in ("pi@-1", "pi@x", "pi", "@3", "a@b@3"):
        with pytest.raises(SpecError, match="^failures = "):
            parse_device_at(text, step_number, field="failures", accepted="DEVICE@STEP")
    assert parse_events(["a@1"], ["b@2.5"], ["a", "b"]) == [DeviceFailure("a", 1.0), DeviceJoin("b", 2.5)]
    with pytest.raises(SpecError, match="^--join = 'z'"):
        parse_events(["a@1"], ["z@2"], ["a", "b"])


def test_dead_devices_blocks_come_from_its_replica_holder():
    old = pipeline(["a", "b", "c"])  # a: 0-2, b: 2-4, c: 4-6; b's replica lives on c (ring successor)
    sources = block_sources(old, ["a", "c"], BATCH)
    assert sources == {0: "a", 1: "a", 2: "c", 3: "c", 4: "c", 5: "c"}
    new = pipeline(["a", "c"])  # a: 0-3, c: 3-6
    assert block_transfers(old, new, sources, BATCH) == [["c", "a", [2]]]
    with pytest.raises(RuntimeError, match="lost"):
        block_sources(old, ["a"], BATCH)  # b and its holder c both gone


def test_unknown_failure_device_is_rejected():
    with pytest.raises(SpecError, match="name a device of the plan"):
        ElasticRun(pipeline(["a", "b"]), TOY, 3, replan=pipeline, failures=[FailureSpec("z", 1)])


def _simulated_home_run():
    """ResNet-18 under GPipe on the `home` cluster: (plan, cluster, cost model, profile, replan) to simulate."""
    from edgepool.cluster import load_cluster
    from edgepool.costmodel import CostModel
    from edgepool.models import build_model
    from edgepool.planners import get_planner
    from edgepool.profile import profile_model

    cluster = load_cluster("home")
    profile = profile_model(build_model("resnet18", meta=True), batch=1)
    cm = CostModel(optimizer="sgd")

    def replan(ds):
        return get_planner("gpipe").plan(profile, cluster, cm, 32, constraints={"devices": list(ds)})
    return replan(list(cluster.devices)), cluster, cm, profile, replan


def test_simulator_shows_the_dip_and_replay_recovers_faster_than_restart():
    from edgepool.elastic.sim_events import simulate_with_events
    from edgepool.events import DeviceFailure

    plan, cluster, cm, profile, replan = _simulated_home_run()
    victim = plan.devices[0]
    runs = {s.name: simulate_with_events(plan, cluster, cm, profile, [DeviceFailure(victim, 20.0)], replan, 60.0, s)
            for s in (PipelineReplay(), CheckpointRestart(checkpoint_every=10, restart_s=10.0))}
    for tl in runs.values():
        kinds = [s.kind for s in tl.segments]
        assert kinds == ["train", "recovery", "train"]
        assert victim not in tl.segments[-1].devices
        gap = max(b[1] - a[1] for a, b in zip(tl.iterations, tl.iterations[1:]))
        assert gap > tl.segments[1].end_s - tl.segments[1].start_s - 1e-9  # no iteration during recovery
    assert runs["replay"].recoveries[0]["regained_s"] < runs["checkpoint"].recoveries[0]["regained_s"]
    assert len(runs["replay"].iterations) > len(runs["checkpoint"].iterations)


def test_an_unknown_recovery_strategy_names_the_accepted_ones():
    from edgepool.elastic.strategy import recovery_strategy

    with pytest.raises(SpecError, match="recovery = 'rewind'.*replay, checkpoint"):
        recovery_strategy("rewind")
    assert recovery_strategy("checkpoint", checkpoint_every=3) == CheckpointRestart(checkpoint_every=3)
    assert isinstance(recovery_strategy("replay", checkpoint_every=3), PipelineReplay)  # an option it has no use for


def test_a_strategy_that_cannot_recover_says_so():
    from edgepool.elastic.strategy import Failure, RecoveryFailed

    class Workers:  # the supervisor's side, as the strategy sees it
        def abort(self, generation, dead):
            pass

        def committed(self, generation, devices):
            return 2

    with pytest.raises(RecoveryFailed, match="block 2 is lost"):  # b and its replica holder c both gone
        PipelineReplay().on_failure(Failure(0, pipeline(["a", "b", "c"]), ["a"], ["b", "c"], BATCH), Workers())
    resume = PipelineReplay().on_failure(Failure(0, pipeline(["a", "b", "c"]), ["a", "c"], ["b"], BATCH), Workers())
    assert resume.committed == 2 and not resume.restarts and resume.sources[2] == "c"


def test_a_custom_recovery_strategy_plugs_into_the_simulation():
    from edgepool.elastic.sim_events import simulate_with_events
    from edgepool.elastic.strategy import RecoveryStrategy, SimulatedRecovery
    from edgepool.events import DeviceFailure

    class FixedPause(RecoveryStrategy):
        name = "pause"
        seen: list = []

        def on_failure(self, failure, workers):
            raise NotImplementedError

        def simulate_failure(self, failure):
            self.seen.append(failure)
            return SimulatedRecovery(5.0, failure.step, 1, {"pause_s": 5.0})

    plan, cluster, cm, profile, replan = _simulated_home_run()
    strategy = FixedPause()
    tl = simulate_with_events(plan, cluster, cm, profile, [DeviceFailure(plan.devices[0], 20.0)], replan, 60.0,
                              strategy)
    assert len(strategy.seen) == 1 and strategy.seen[0].alive == plan.devices[1:]
    assert tl.mode == "pause" and tl.recoveries[0]["pause_s"] == 5.0
    assert tl.segments[1].end_s - tl.segments[1].start_s == pytest.approx(5.0)


def _assert_same_weights(state: dict[str, torch.Tensor], steps: int) -> None:
    ref = reference_train(TOY, BATCH, steps, lr=LR)
    assert set(ref) <= set(state)
    for k, v in ref.items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigkill_mid_iteration_replays_and_matches_failure_free_training(tmp_path):
    steps = 6
    run = ElasticRun(pipeline(["a", "b", "c"]), TOY, steps, replan=pipeline, training=Training(lr=LR),
                     out_dir=tmp_path, failures=[FailureSpec("b", 3)], env={"PYTHONPATH": TESTS},
                     supervision=Supervision(timeout_s=120))
    out = run.run()
    assert [p.devices for p in out.plans] == [["a", "b", "c"], ["a", "c"]]
    failure = next(e for e in out.events if e["kind"] == "failure")
    assert failure["device"] == "b"
    _assert_same_weights(out.state, steps)
    assert out.samples["samples_lost"] == 0 and out.samples["samples_double_counted"] == 0
    assert out.samples["used"] == steps * BATCH
    assert out.recovery_times()[0]["time_to_interrupted_iteration_s"] is not None


def _open_sockets() -> set[str]:
    fd_dir = Path("/proc/self/fd")
    found = set()
    for fd in fd_dir.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.mark.slow
@pytest.mark.root
def test_sigkill_mid_iteration_on_the_testbed_replays_matches_and_leaves_nothing(tmp_path):
    """The same kill -9 with every device in its own cgroup and network namespace: the workers reach the
    supervisor's store only through the testbed's bridge, the survivors replay, and teardown leaves nothing."""
    from edgepool.cluster import Cluster
    from edgepool.testbed import Testbed, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"testbed unavailable: {reason}")
    from test_testbed_root import _assert_nothing_left, _device, _root_state

    steps = 6  # paced, so that the supervisor polling the store over the bridge still kills inside step 3
    cluster = Cluster.uniform([_device(n, 10) for n in ("a", "b", "c")], bandwidth=1e8)
    root_before, sockets_before = _root_state(), _open_sockets()
    run = ElasticRun(pipeline(["a", "b", "c"]), TOY, steps, replan=pipeline, training=Training(lr=LR),
                     out_dir=tmp_path, failures=[FailureSpec("b", 3)], env={"PYTHONPATH": TESTS},
                     supervision=Supervision(timeout_s=120, pace_s=0.3), launcher="testbed", cluster=cluster)
    out = run.run()
    tb = run.launcher
    assert isinstance(tb, Testbed) and out.where["launcher"] == "testbed"  # not a silent local fallback
    assert all(h.env["GLOO_SOCKET_IFNAME"] == "veth0" for h in tb.handles)
    assert {h.device for h in tb.handles} == {"a", "b", "c"}
    assert [p.devices for p in out.plans] == [["a", "b", "c"], ["a", "c"]]
    dead = next(e for e in out.events if e["kind"] == "dead")
    assert dead["codes"] == {"b": -9}  # b's process died of SIGKILL, mid-iteration
    first = next(e for e in out.events if e["kind"] == "failure")
    assert first["step"] == 3 and out.recovery_times()[0]["time_to_interrupted_iteration_s"] is not None
    _assert_same_weights(out.state, steps)
    assert out.samples["samples_lost"] == 0 and out.samples["samples_double_counted"] == 0
    _assert_nothing_left(tb, str(tmp_path), root_before)  # namespaces, cgroups, processes, interfaces, qdiscs
    assert _open_sockets() <= sockets_before, "the supervisor's store (in the hub namespace) was not closed"


@pytest.mark.slow
def test_checkpoint_restart_baseline_also_matches(tmp_path):
    steps = 5  # pace: iterations last long enough that a busy host's supervisor still kills inside step 3
    out = ElasticRun(pipeline(["a", "b", "c"]), TOY, steps, replan=pipeline,
                     strategy=CheckpointRestart(checkpoint_every=2), training=Training(lr=LR),
                     out_dir=tmp_path, failures=[FailureSpec("c", 3)], env={"PYTHONPATH": TESTS},
                     supervision=Supervision(timeout_s=120, pace_s=0.3)).run()
    failure = next(e for e in out.events if e["kind"] == "failure")
    restart = next(e for e in out.events if e["kind"] == "restart")
    assert restart["from_step"] == failure["step"] // 2 * 2  # the newest checkpoint before the failure
    assert failure["step"] == 3, f"the kill landed in step {failure['step']}, not 3: the supervisor polled late"
    _assert_same_weights(out.state, steps)
    assert out.samples["samples_lost"] == 0 and out.samples["samples_double_counted"] == 0


@pytest.mark.slow
def test_a_joining_device_gets_work(tmp_path):
    steps = 14
    out = ElasticRun(pipeline(["a", "b"]), TOY, steps, replan=pipeline, training=Training(lr=LR),
                     out_dir=tmp_path, joins=[JoinSpec("d", 1)], env={"PYTHONPATH": TESTS},
                     supervision=Supervision(timeout_s=120, pace_s=0.3)).run()
    assert [p.devices for p in out.plans] == [["a", "b"], ["a", "b", "d"]]
    assert out.results["d"]["iterations"], "the joined device ran no iteration"
    assert out.samples["samples_lost"] == 0 and out.samples["samples_double_counted"] == 0
    _assert_same_weights(out.state, steps)


@pytest.mark.slow
def test_recovery_benchmark_reports_its_metrics():
    from edgepool.benchmarking import load_benchmark

    result = load_benchmark("recovery").run(quick=True, progress=False)
    for key in ("recovery_speedup_vs_checkpoint_restart", "samples_lost", "samples_double_counted"):
        assert key in result["metrics"]
    assert result["metrics"]["samples_lost"] == 0
    assert result["metrics"]["recovery_speedup_vs_checkpoint_restart"] > 1.0
