"""Energy as a planning objective: the search against brute force, budgets, the energy breakdown, and the
power work's planning modes."""
from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from edgepool.catalog import get_device
from edgepool.cli import app
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.plan import plan_from_dict
from edgepool.planners import energy as E
from edgepool.planners import get_planner
from edgepool.planners.energy import evaluate
from edgepool.power.planning_modes import FRONT_MODES, planning_modes, with_planning_modes
from edgepool.simulator import simulate
from test_planners import toy_cluster, toy_profile

KINDS = ["jetson-orin-nano", "jetson-xavier-nx", "jetson-nano"]  # 2 x 3 x 2 presets: 12 combinations
BATCH = 16


@pytest.fixture(scope="module")
def problem():
    return toy_profile(6, seed=3), toy_cluster(KINDS, bandwidth=1e9 / 8), CostModel()


def brute_force(inner_name, profile, cluster, cost_model, batch):
    """Every device subset x every combination of its devices' modes, planned for throughput and replayed."""
    inner = get_planner(inner_name).inner
    out = []
    names = list(cluster.devices)
    for n in range(1, len(names) + 1):
        for subset in itertools.combinations(names, n):
            choices = [[m.name for m in cluster.devices[d].power_modes] for d in subset]
            for combo in itertools.product(*choices):
                moded = cluster.with_power_modes(dict(zip(subset, combo)))
                plan = inner.plan(profile, moded, cost_model, batch, "throughput", {"devices": list(subset)})
                out.append(evaluate(plan, profile, moded, cost_model))
    return [c for c in out if c.feasible]


@pytest.mark.parametrize("planner", ["dp-proportional", "gpipe"])
def test_energy_objective_matches_brute_force_on_a_small_case(problem, planner):
    profile, cluster, cost_model = problem
    every = brute_force(planner, profile, cluster, cost_model, BATCH)
    base = evaluate(get_planner(planner).plan(profile, cluster, cost_model, BATCH), profile, cluster, cost_model)
    floor = 0.7 * base.throughput
    plan = get_planner(planner).plan(profile, cluster, cost_model, BATCH, "energy", {"min_throughput": floor})
    got = evaluate(plan, profile, cluster, cost_model)
    best = min(c.energy_per_sample_j for c in every if c.throughput >= floor)
    assert got.throughput >= floor
    # the search drops devices in one order only; brute force tries every subset, so it can only match or beat
    assert got.energy_per_sample_j == pytest.approx(best, rel=0.02)
    assert got.energy_per_sample_j < base.energy_per_sample_j  # a real saving over the throughput plan


def test_descent_reaches_the_exact_search_on_the_small_case(problem, monkeypatch):
    profile, cluster, cost_model = problem
    exact = get_planner("dp-proportional").plan(profile, cluster, cost_model, BATCH, "energy")
    monkeypatch.setattr(E, "EXHAUSTIVE_PLANS", 0)
    descended = get_planner("dp-proportional").plan(profile, cluster, cost_model, BATCH, "energy")
    e_exact = evaluate(exact, profile, cluster, cost_model).energy_per_sample_j
    e_desc = evaluate(descended, profile, cluster, cost_model).energy_per_sample_j
    assert e_desc == pytest.approx(e_exact, rel=0.05)


def test_throughput_under_a_power_budget_is_the_fastest_within_it(problem):
    profile, cluster, cost_model = problem
    every = brute_force("dp-proportional", profile, cluster, cost_model, BATCH)
    budget = sorted(c.power_w for c in every)[len(every) // 2]  # half the candidates fit
    plan = get_planner("dp-proportional").plan(profile, cluster, cost_model, BATCH, "throughput",
                                                {"power_w": budget})
    got = evaluate(plan, profile, cluster, cost_model)
    assert plan.feasible and got.power_w <= budget
    assert got.throughput == pytest.approx(max(c.throughput for c in every if c.power_w <= budget), rel=0.05)


def test_an_impossible_budget_is_an_infeasible_plan_that_says_the_least_possible(problem):
    profile, cluster, cost_model = problem
    plan = get_planner("dp").plan(profile, cluster, cost_model, BATCH, "throughput", {"power_w": 0.01})
    assert not plan.feasible
    assert "power <= 0.01 W (least" in plan.infeasible_reason


@pytest.mark.parametrize("objective, constraints, field", [
    ("joules", {}, "objective"),
    ("energy", {"power_w": -3}, "constraints.power_w"),
    ("energy", {"throughput_fraction": 1.5}, "constraints.throughput_fraction"),
])
def test_bad_objectives_and_budgets_name_the_field(problem, objective, constraints, field):
    profile, cluster, cost_model = problem
    with pytest.raises(SpecError) as err:
        get_planner("dp").plan(profile, cluster, cost_model, BATCH, objective, constraints)
    assert err.value.field == field


def test_energy_breakdown_sums_and_counts_communication(problem):
    profile, cluster, cost_model = problem
    slow = toy_cluster(KINDS, bandwidth=10e6 / 8)
    report = simulate(get_planner("dp").plan(profile, slow, cost_model, BATCH), slow, cost_model, profile)
    for stats in report.per_device.values():
        assert sum(stats.energy_breakdown_j.values()) == pytest.approx(stats.energy_j)
        assert stats.energy_breakdown_j["communication"] > 0  # a gradient all-reduce over 10 Mbit/s
    per_sample = report.metrics["energy_breakdown_j_per_sample"]
    assert sum(per_sample.values()) == pytest.approx(report.metrics["energy_j_per_sample"])


def test_a_plan_carries_its_power_modes_and_the_simulator_applies_them(problem):
    profile, cluster, cost_model = problem
    plan = get_planner("dp").plan(profile, cluster, cost_model, BATCH)
    fast = simulate(plan, cluster, cost_model, profile)
    slow_plan = plan.model_copy(update={"power_modes": {"jetson-orin-nano-0": "7W"}})
    again = plan_from_dict(json.loads(slow_plan.to_json()))
    assert again.power_modes == {"jetson-orin-nano-0": "7W"}
    slow = simulate(again, cluster, cost_model, profile)
    assert slow.per_device["jetson-orin-nano-0"].busy_s > fast.per_device["jetson-orin-nano-0"].busy_s
    with pytest.raises(SpecError, match="power_modes.jetson-orin-nano-0"):
        simulate(plan.model_copy(update={"power_modes": {"jetson-orin-nano-0": "9000W"}}), cluster, cost_model,
                 profile)


def test_planning_modes_are_the_presets_and_the_time_energy_front():
    from edgepool.models import build_model
    from edgepool.profile import profile_model
    orin = get_device("jetson-agx-orin")
    profile = profile_model(build_model("mobilenet_v2", meta=True), batch=1)
    modes = planning_modes(orin, profile, 32)
    names = [m.name for m in modes]
    assert {"MAXN", "50W", "30W", "15W"} <= set(names)
    assert len(modes) <= 4 + FRONT_MODES
    assert [m.compute_scale for m in modes] == sorted((m.compute_scale for m in modes), reverse=True)
    assert all(m.busy_w and m.busy_w >= orin.power_idle_w for m in modes)
    cost = CostModel()
    # each mode's busy joules per FLOP: a slower grid mode on the front must draw less while busy
    grid = [m for m in modes if "=" in m.name]
    draws = [m.busy_w for m in grid]
    assert draws == sorted(draws, reverse=True)
    assert cost.power(orin, 1.0, modes[0]) == pytest.approx(modes[0].busy_w)
    cluster = with_planning_modes(toy_cluster(["jetson-agx-orin", "rpi5"]), profile, 32)
    assert cluster.power_modes == {"jetson-agx-orin-0": "MAXN"}  # the rpi5 has no published mode space
    assert len(cluster.devices["jetson-agx-orin-0"].power_modes) == len(modes)


SMALL_LAB = """name: small-lab
devices:
  - {name: orin-nx, type: jetson-orin-nx}
  - {name: orin-nano, type: jetson-orin-nano}
  - {name: xavier-nx, type: jetson-xavier-nx}
default_link: {bandwidth: 1Gbps, latency: 0.1ms}
"""


def test_compare_cli_energy_objective_draws_the_pareto_plot(tmp_path):
    png, lab = tmp_path / "pareto.png", tmp_path / "lab.yaml"
    lab.write_text(SMALL_LAB)
    result = CliRunner().invoke(app, ["compare", "--cluster", str(lab), "--model", "mobilenet_v2",
                                      "--batch", "16", "--objective", "energy", "--pareto", str(png), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["objective"] == "energy" and out["constraints"] == {"throughput_fraction": 0.9}
    rows = {r["planner"]: r for r in out["rows"]}
    assert {r["parallelism"] for r in rows.values()} == {"data", "pipeline", "hybrid"}
    for r in rows.values():  # the first candidate is the planner's own throughput plan
        if r["feasible"]:
            assert r["throughput"] >= 0.9 * r["candidates"][0]["throughput"] - 1e-9
            assert r["energy_per_sample_j"] <= r["candidates"][0]["energy_per_sample_j"] + 1e-12
    assert png.stat().st_size > 10_000


def test_compare_cli_bad_objective_is_one_line():
    result = CliRunner().invoke(app, ["compare", "--cluster", "jetson-lab", "--model", "mobilenet_v2",
                                      "--batch", "16", "--objective", "joules"])
    assert result.exit_code == 2
    assert "objective" in result.output and "Traceback" not in result.output


def _row(planner, kind, own, chosen, others=()):
    cand = lambda thr, e: {"throughput": thr, "energy_per_sample_j": e, "power_w": thr * e, "devices": ["a"],  # noqa: E731
                           "power_modes": {}, "breakdown_j_per_sample": {}}
    return {"planner": planner, "parallelism": kind, "throughput": chosen[0], "energy_per_sample_j": chosen[1],
            "candidates": [cand(*own), cand(*chosen), *(cand(*o) for o in others)]}


def test_energy_benchmark_compares_against_the_fastest_plan_at_its_floor():
    from edgepool.benchmarking import load_benchmark
    bench = load_benchmark("energy")
    rows = [_row("hybrid", "hybrid", own=(100.0, 1.0), chosen=(95.0, 0.8)),
            _row("dp", "data", own=(50.0, 2.0), chosen=(46.0, 1.5), others=[(91.0, 0.7)]),  # its own floor: 45
            _row("gpipe", "pipeline", own=(80.0, 1.2), chosen=(75.0, 0.5))]
    s = bench.scenario_result("toy", rows)
    assert s["throughput_plan"]["planner"] == "hybrid"
    # the least energy at >= 90 of 100 samples/s, from any planner's candidates: dp's (91, 0.7)
    assert s["energy_plan"]["planner"] == "dp" and s["saving"] == pytest.approx(0.3)
    assert s["parallelism"]["pipeline"]["energy_plan_j_per_sample"] == 0.5
    assert s["parallelism"]["data"]["throughput_plan_j_per_sample"] == 2.0


def test_stored_energy_run_has_every_metric_labelled():
    from pathlib import Path

    from edgepool.benchmarking import goals_met, load_benchmark
    root = Path(__file__).resolve().parents[1]
    stored = json.loads(next((root / "benchmarks/results/energy").glob("bench-energy-*.json")).read_text())
    bench = load_benchmark("energy")
    names = ("energy_per_sample_saving_vs_throughput_plan", "parallelism_energy_table",
             "fetch_stall_fraction_default", "fetch_stall_fraction_best", "iteration_time_cv")
    assert set(names) <= set(stored["metrics"])
    assert set(stored["simulated"]) | set(stored["measured"]) >= set(names)
    assert stored["goals_met"] == goals_met(stored["metrics"], bench.GOALS)
    assert len(stored["scenarios"]) == 16 and not stored["quick"]
    for s in stored["scenarios"]:
        assert s["throughput_kept"] >= bench.FLOOR - 1e-9 and s["saving"] >= 0
    assert stored["metrics"]["fetch_stall_fraction_best"] <= stored["metrics"]["fetch_stall_fraction_default"]
