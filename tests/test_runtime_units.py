"""Fast runtime tests: layouts, schedules, gradient buckets, torchrun commands (no processes started)."""
from __future__ import annotations

import pytest
from torch import nn

from edgepool.catalog import get_device
from edgepool.cluster import Cluster
from edgepool.errors import SpecError
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.runtime.comm import gradient_buckets
from edgepool.runtime.launch import torchrun_commands
from edgepool.runtime.layout import Layout, split_counts
from edgepool.schedule import SCHEDULES, in_flight, stage_actions


def two_stage_plan(**kw) -> Plan:
    defaults = dict(planner="hand", model="m", cluster="c", num_layers=4, batch=10, microbatches=2, schedule="1f1b",
                    pipelines=[PipelinePlan(stages=[StagePlan(layers=(0, 2), devices=["a", "b"], shares=[0.7, 0.3]),
                                                    StagePlan(layers=(2, 4), devices=["c", "d"], shares=[0.5, 0.5])])])
    return Plan(**{**defaults, **kw})


def test_split_counts_sum_and_proportion():
    assert split_counts(10, [0.7, 0.3]) == [7, 3]
    assert split_counts(5, [1, 1, 1]) == [2, 2, 1]
    assert sum(split_counts(13, [0.21, 0.33, 0.46])) == 13


def test_transfers_tile_every_microbatch_between_uneven_groups():
    layout = Layout(two_stage_plan())
    for mb in range(2):
        transfers = layout.transfers(0, 0, mb)
        rows = sorted((t.start, t.end) for t in transfers)
        assert rows[0][0] == 0 and rows[-1][1] == layout.microbatch_size(0, mb)
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))  # contiguous, no overlap
    # 5 rows: a has 0..3 (70 %: 3.5 -> 4), b 4; c and d split 3/2, so a sends to both c and d
    pairs = {(t.src, t.dst): t.rows for t in layout.transfers(0, 0, 0)}
    assert pairs == {("a", "c"): 3, ("a", "d"): 1, ("b", "d"): 1}


def test_fractional_shares_of_small_microbatches_even_out_over_the_iteration():
    from edgepool.runtime.layout import diffused_counts

    counts = diffused_counts([1] * 20, [0.65, 0.35])
    assert all(sum(c) == 1 for c in counts)
    assert [sum(c[i] for c in counts) for i in range(2)] == [13, 7]
    assert sum(sum(c) for c in diffused_counts([3, 3, 2], [0.2, 0.3, 0.5])) == 8


def test_too_many_microbatches_is_a_spec_error():
    with pytest.raises(SpecError, match="microbatches"):
        Layout(two_stage_plan(batch=4, microbatches=8))


@pytest.mark.parametrize("stages,micro", [(1, 3), (3, 2), (4, 8)])
def test_schedules_run_every_microbatch_once_each_way(stages, micro):
    for name in ("1f1b", "gpipe"):
        for s in range(stages):
            actions = stage_actions(name, stages, s, micro)
            fwd = [a.microbatch for a in actions if a.kind == "fwd"]
            bwd = [a.microbatch for a in actions if a.kind == "bwd"]
            assert fwd == list(range(micro)) and sorted(bwd) == list(range(micro))
            # a backward never comes before its forward
            assert all(actions.index(next(a for a in actions if a.kind == "fwd" and a.microbatch == m))
                       < actions.index(next(a for a in actions if a.kind == "bwd" and a.microbatch == m))
                       for m in range(micro))


def test_1f1b_holds_fewer_activations_than_gpipe():
    assert in_flight(stage_actions("gpipe", 4, 0, 8)) == 8
    assert in_flight(stage_actions("1f1b", 4, 0, 8)) == 4
    assert in_flight(stage_actions("1f1b", 4, 3, 8)) == 1
    assert [str(a) for a in stage_actions("1f1b", 2, 0, 3)] == ["F0", "F1", "B0", "F2", "B1", "B2"]


@pytest.mark.parametrize("stages,micro", [(1, 2), (2, 3), (4, 8)])
def test_every_send_has_a_receive_on_the_neighbour(stages, micro):
    for name in ("1f1b", "gpipe"):
        lists = [stage_actions(name, stages, s, micro) for s in range(stages)]
        sends = {(s, a.send_to, a.kind, a.microbatch) for s, actions in enumerate(lists) for a in actions
                 if a.send_to is not None}
        receives = {(a.recv_from, s, a.kind, a.microbatch) for s, actions in enumerate(lists) for a in actions
                    if a.recv_from is not None}
        assert sends == receives and all(abs(src - dst) == 1 for src, dst, _, _ in sends)
        # activations flow toward the last stage, gradients back; the ends neither receive nor send past the edge
        assert all((dst > src) == (kind == "fwd") for src, dst, kind, _ in sends)
        assert len(sends) == 2 * (stages - 1) * micro
    assert SCHEDULES["gpipe"].waves and not SCHEDULES["1f1b"].waves
    assert all(a.kind == "fwd" for a in stage_actions("gpipe", 3, 2, 4)[:4])  # waves: every forward first


def test_gradient_buckets_group_tied_weights_across_stages():
    first = nn.Linear(4, 4)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = first

        def forward(self, x):
            return self.linear(x)

    blocks = nn.Sequential(first, nn.Linear(4, 4), nn.Linear(4, 4), Head())
    layout = Layout(two_stage_plan())
    buckets = {b.ranks: set(b.params) for b in gradient_buckets(blocks, layout)}
    assert buckets[(0, 1, 2, 3)] == {"0.weight", "0.bias"}  # tied: first stage and last stage hold it
    assert buckets[(0, 1)] == {"1.weight", "1.bias"}
    assert buckets[(2, 3)] == {"2.weight", "2.bias"}


def test_torchrun_commands_need_addresses():
    devices = [get_device("rpi5").model_copy(update={"name": n}) for n in ("a", "b", "c", "d")]
    cluster = Cluster.uniform(devices, bandwidth=1e8)
    plan = two_stage_plan()
    with pytest.raises(SpecError, match="address"):
        torchrun_commands(plan, cluster)
    cluster.addresses.update({"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"})
    commands = torchrun_commands(plan, cluster, "run.json")
    assert list(commands) == ["a", "b", "c", "d"]
    assert "--node-rank=2" in commands["c"] and "--master-addr=10.0.0.1" in commands["c"]
    assert "EDGEPOOL_DEVICE=d" in commands["d"] and "-m edgepool.runtime.worker run.json" in commands["d"]


def test_print_launch_writes_the_spec_and_one_torchrun_command_per_host(tmp_path):
    from typer.testing import CliRunner

    from edgepool.cli import app

    spec = tmp_path / "two-hosts.yaml"
    spec.write_text("name: two-hosts\n"
                    "devices:\n"
                    "  - {name: desk, type: laptop-i7-1360p, address: 192.168.1.10}\n"
                    "  - {name: board, type: jetson-orin-nano, address: 192.168.1.11}\n"
                    "default_link: {bandwidth: 1Gbps, latency: 0.2ms}\n")
    result = CliRunner().invoke(app, ["train", "--cluster", str(spec), "--model", "gpt2-tiny", "--planner", "gpipe",
                                      "--batch", "4", "--print-launch", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("EDGEPOOL_DEVICE=")]
    assert len(lines) == 2 and all("--master-addr=192.168.1.10" in l for l in lines)
    assert (tmp_path / "plan-run.json").is_file()


@pytest.mark.slow
def test_message_probe_measures_a_small_positive_cpu_cost():
    from edgepool.runtime.probes.comm import measure_message_cpu_s

    cost = measure_message_cpu_s(4096, rounds=30)
    assert 1e-6 < cost < 0.05  # tens of microseconds to a millisecond per message on a CPU host
