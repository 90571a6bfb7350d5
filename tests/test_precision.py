"""Precision placement: the catalog's accelerators, placements, the cost model's hand-overs, the policies and
the oracle, on hand-made problems (the real tasks are in test_precision_tasks/emulate and the bench test)."""
import itertools
import json
import random

import pytest
from typer.testing import CliRunner

from edgepool.catalog import get_device, list_devices
from edgepool.cli import app
from edgepool.device import Accelerator
from edgepool.errors import SpecError
from edgepool.precision.cost import CostTable, UnitCost
from edgepool.precision.placement import CPU, Placement, Target, device_targets
from edgepool.precision.policies import (AllAccelerator, AllCpu, MlmpMaxAccuracy, MlmpMinTime, Oracle, Ours,
                                         lagrangian, milp, viterbi)
from edgepool.precision.problem import PlacementProblem

REQUIRED_ACCELERATORS = {"coral-edge-tpu-usb", "hailo-8l", "rk3588-npu", "hexagon-npu", "nano-maxwell-gpu"}


def test_catalog_has_the_low_cost_accelerators_with_sources():
    found = {d.accelerator.name: d for d in list_devices() if d.accelerator}
    assert REQUIRED_ACCELERATORS <= set(found)
    for device in found.values():
        acc = device.accelerator
        assert {"peak_flops", "memory", "power", "link"} <= set(acc.sources), acc.name
        assert acc.link_bandwidth > 0 and acc.link_latency_s > 0
        assert device.cpu_peak() < max(acc.peak_flops.values())  # the point of an accelerator
    assert get_device("rpi4-coral-usb").accelerator.precisions == ["int8"]
    assert get_device("rpi5-hailo-8l").memory_bytes == get_device("rpi5").memory_bytes  # the base board's CPU side


def test_accelerator_spec_refuses_unknown_precisions():
    with pytest.raises(ValueError, match="precision"):
        Accelerator(name="x", peak_flops={"int4": 1e12}, memory_bytes=1, power_active_w=1, link_bandwidth=1,
                    link_latency_s=0)


def units(n=6, seed=0):
    rng = random.Random(seed)
    return [UnitCost(f"u{i}", rng.uniform(1e6, 5e7), rng.uniform(1e3, 1e6), rng.uniform(1e4, 2e5),
                     rng.uniform(1e4, 2e5)) for i in range(n)]


def problem(device="phone-snapdragon-8-gen-3", n=6, max_loss=3.0, seed=0):
    """A hand-made problem: each low-precision unit costs a fixed penalty, and accuracy adds them up."""
    rng = random.Random(seed)
    costs = CostTable.build(get_device(device), units(n, seed))
    precisions = {t.precision for t in costs.targets}
    penalty = [{p: (0.0 if p == "fp32" else rng.uniform(0, 0.012 if p == "int8" else 0.001)) for p in precisions}
               for _ in range(n)]
    measure = lambda precs: 0.95 - sum(penalty[i][p] for i, p in enumerate(precs))  # noqa: E731
    proxy = [{p: v * rng.uniform(0.7, 1.3) for p, v in row.items()} for row in penalty]
    drops = [{p: 100 * v for p, v in row.items()} for row in penalty]
    return PlacementProblem(costs, proxy, drops, 0.95, max_loss, measure)


def test_a_placement_never_puts_a_unit_where_its_precision_is_missing():
    hailo = get_device("rpi5-hailo-8l")
    assert device_targets(hailo) == [CPU, Target("accelerator", "int8")]
    with pytest.raises(SpecError, match=r"placement\[1\]"):
        Placement(policy="x", targets=(CPU, Target("accelerator", "fp16"))).check(hailo, 2)
    with pytest.raises(SpecError, match="accelerator"):
        device_targets(get_device("rpi5"))  # no accelerator at all
    for device in ("rpi5-hailo-8l", "phone-snapdragon-8-gen-3", "jetson-nano"):
        p = problem(device)
        for policy in (AllCpu(), AllAccelerator(), MlmpMinTime(), MlmpMaxAccuracy(), Ours(), Oracle()):
            policy.place(p).check(get_device(device), p.num_units)  # raises on a bad target


def test_transfers_are_counted_where_sides_switch():
    p = problem("rpi5-hailo-8l", n=4)
    costs, acc = p.costs, Target("accelerator", "int8")
    all_cpu = costs.estimate((CPU,) * 4)
    assert all_cpu.transfer_s == 0 and all_cpu.switches == 0
    middle = costs.estimate((CPU, acc, acc, CPU))
    link = costs.device.accelerator
    expected = 2 * link.link_latency_s + (costs.units[1].input_bytes + costs.units[3].input_bytes) / 4 \
        / link.link_bandwidth  # int8: a quarter of the fp32 bytes cross
    assert middle.switches == 2 and middle.transfer_s == pytest.approx(expected)
    # the input starts and the prediction ends on the CPU: all-accelerator pays both ends
    ends = costs.estimate((acc,) * 4)
    assert ends.switches == 2 and ends.transfer_s > 2 * link.link_latency_s
    assert ends.time_s == pytest.approx(ends.cpu_s + ends.accelerator_s + ends.transfer_s)


def test_weights_beyond_accelerator_memory_stream_over_the_link():
    device = get_device("rpi4-coral-usb")
    big = [UnitCost("big", 1e6, 40e6, 1e3, 1e3)]  # 40 MB fp32 = 10 MB int8 > 8 MiB of SRAM
    est = CostTable.build(device, big).estimate((Target("accelerator", "int8"),))
    assert est.streamed_bytes == pytest.approx(10e6 - device.accelerator.memory_bytes)
    assert est.transfer_s > est.streamed_bytes / device.accelerator.link_bandwidth


def test_energy_is_modelled_from_busy_times():
    p = problem("rpi5-hailo-8l")
    cpu, acc = p.costs.estimate(AllCpu().place(p)), p.costs.estimate(AllAccelerator().place(p))
    assert acc.energy_j < cpu.energy_j
    d = p.costs.device
    assert cpu.energy_j == pytest.approx(d.power_max_w * cpu.time_s + d.accelerator.power_idle_w * cpu.time_s)


def test_viterbi_is_exact_for_its_objective():
    p = problem("phone-snapdragon-8-gen-3", n=5)
    for multiplier in (0.0, 0.01, 1.0):
        best = min(itertools.product(*[p.costs.targets] * 5),
                   key=lambda t: p.time_of(t) + multiplier * p.proxy_of(t))  # no streaming in this problem
        got = viterbi(p, multiplier)
        assert p.time_of(got) + multiplier * p.proxy_of(got) == pytest.approx(
            p.time_of(best) + multiplier * p.proxy_of(best))


@pytest.mark.parametrize("budget_share", [0.05, 0.2, 0.5, 1.0])
def test_milp_oracle_matches_brute_force_on_a_tiny_model(budget_share):
    p = problem("phone-snapdragon-8-gen-3", n=5, seed=3)
    budget = budget_share * sum(max(row.values()) for row in p.proxy)
    feasible = [t for t in itertools.product(*[p.costs.targets] * 5) if p.proxy_of(t) <= budget]
    best = min(feasible, key=p.time_of)
    got = milp(p, budget)
    assert p.proxy_of(got) <= budget + 1e-9
    assert p.time_of(got) == pytest.approx(p.time_of(best), rel=1e-6)
    assert p.time_of(lagrangian(p, budget)) >= p.time_of(best) - 1e-12  # the heuristic can't beat the optimum


def test_exhaustive_oracle_is_the_fastest_placement_that_keeps_the_floor():
    p = problem("phone-snapdragon-8-gen-3", n=5, max_loss=2.0, seed=1)
    oracle = Oracle()
    assert oracle.exhaustive(p)
    placement = oracle.place(p)
    every = itertools.product(*[p.costs.targets] * 5)
    best = min((t for t in every if p.measure(tuple(x.precision for x in t)) >= p.floor - 1e-9), key=p.time_of)
    assert p.time_of(placement.targets) == pytest.approx(p.time_of(best))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policies_keep_the_floor_and_ours_is_near_the_oracle(seed):
    p = problem("phone-snapdragon-8-gen-3", n=12, max_loss=2.0, seed=seed)
    oracle_time = p.time_of(Oracle(exhaustive_up_to=0).place(p).targets)  # the MILP grid, as on big models
    for policy in (MlmpMinTime(), MlmpMaxAccuracy(), Ours()):
        placement = policy.place(p)
        assert p.meets_floor(placement.targets), policy.name
        assert p.time_of(placement.targets) <= p.time_of(AllCpu().place(p).targets)
    ours = p.time_of(Ours().place(p).targets)
    assert ours <= p.time_of(MlmpMinTime().place(p).targets) + 1e-12
    assert oracle_time / ours >= 0.9


def test_a_floor_all_accelerator_keeps_gives_all_accelerator():
    p = problem("rpi5-hailo-8l", n=6, max_loss=100.0)
    fastest = AllAccelerator().place(p)
    assert Ours().place(p).targets == fastest.targets
    assert MlmpMinTime().place(p).targets == fastest.targets


def test_cli_refuses_bad_input_in_one_line():
    runner = CliRunner()
    result = runner.invoke(app, ["precision", "profile", "--model", "resnet", "--device", "rpi5-hailo-8l"])
    assert result.exit_code == 2 and "--model" in result.output and "digits-cnn" in result.output
    result = runner.invoke(app, ["precision", "place", "--model", "digits-cnn", "--device", "rpi5",
                                 "--accuracy-floor", "1"])
    assert result.exit_code == 2 and "accelerator" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["precision", "place", "--model", "digits-cnn", "--device", "rpi5-hailo-8l",
                                 "--accuracy-floor", "-1"])
    assert result.exit_code == 2 and "--accuracy-floor" in result.output
    result = runner.invoke(app, ["devices", "--json"])
    assert any(d.get("accelerator") for d in json.loads(result.output))


def test_a_lookup_reads_rows_not_its_whole_table():
    table = 40e6  # a 10 M-entry fp32 embedding table; one input looks up 4 KB of it
    plain = UnitCost("emb", 0.0, table, 100.0, 4096.0)
    lookup = UnitCost("emb", 0.0, table, 100.0, 4096.0, lookup_table_bytes=table)
    device = get_device("rpi5-hailo-8l")
    assert lookup.weight_read_bytes == pytest.approx(4096.0)
    slow, fast = CostTable.build(device, [plain]), CostTable.build(device, [lookup])
    assert fast.unit_s[0][CPU] < slow.unit_s[0][CPU] / 100
    acc = Target("accelerator", "int8")
    assert fast.streamed_bytes((acc,)) == slow.streamed_bytes((acc,))  # the table must still be resident
