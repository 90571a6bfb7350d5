"""The scheduling core every scenario shares: the fleet from a cluster, FIFO node queues, seeded arrivals, the
scenario registry, and the CLI's answer to bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepool.benchmarking import goals_met
from edgepool.cli import app
from edgepool.cluster import example_cluster_path, load_cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.scheduling.arrivals import poisson_arrivals
from edgepool.scheduling.fleet import Fleet
from edgepool.scheduling.queues import NodeQueues
from edgepool.scheduling.scenarios import SCENARIOS, scenario_module

runner = CliRunner()


def test_fleet_speeds_and_links_come_from_the_cluster_and_cost_model():
    cluster = load_cluster(example_cluster_path("fog-graph"))
    cost_model = CostModel(efficiency={"tx2": 0.2})
    fleet = Fleet.from_cluster(cluster, cost_model)
    assert fleet.names == cluster.names
    tx2 = fleet.index("tx2")
    assert fleet.speeds[tx2] == pytest.approx(cost_model.effective_flops(cluster.devices["tx2"]))
    link = cluster.link("tx2", "cloud")
    assert fleet.transfer_s(tx2, fleet.index("cloud"), 1e6) == pytest.approx(link.latency_s + 1e6 / link.bandwidth)
    assert fleet.transfer_s(tx2, tx2, 1e9) == 0.0
    assert fleet.compute_s(tx2, 1e12) == pytest.approx(1e12 / fleet.speeds[tx2])


def test_queues_run_work_first_in_first_out():
    queues = NodeQueues(2)
    assert queues.submit(0, now=1.0, seconds=2.0) == 3.0
    assert queues.submit(0, now=2.0, seconds=1.0) == 4.0  # waits for the first piece
    assert queues.submit(1, now=5.0, seconds=1.0) == 6.0
    assert queues.backlog(3.5).tolist() == [0.5, 2.5]
    assert queues.busy_s.tolist() == [3.0, 1.0]


def test_arrivals_are_reproducible_from_the_seed_and_have_the_rate():
    a = poisson_arrivals(2.0, 1000.0, np.random.default_rng(7))
    b = poisson_arrivals(2.0, 1000.0, np.random.default_rng(7))
    assert np.array_equal(a, b) and np.all(np.diff(a) >= 0)
    assert len(a) == pytest.approx(2000, rel=0.1)
    assert poisson_arrivals(0.0, 10.0, np.random.default_rng(0)).size == 0


def test_every_scenario_module_has_the_interface():
    for name in SCENARIOS:
        module = scenario_module(name)
        assert module.SCENARIO == name and callable(module.train) and callable(module.evaluate)
    with pytest.raises(SpecError, match="'nope'"):
        scenario_module("nope")


@pytest.mark.parametrize("args,needle", [
    (["eval", "--scenario", "tetris"], "--scenario = 'tetris'"),
    (["train", "--scenario", "tetris"], "--scenario = 'tetris'"),
    (["eval", "--scenario", "recslam", "--trained", "no/such/folder"], "--trained = 'no/such/folder'"),
])
def test_bad_input_is_one_line_naming_the_field(args, needle, tmp_path):
    result = runner.invoke(app, ["schedule", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    assert needle in text, text
    assert not (tmp_path / "out" / "report.json").exists()


def test_stored_benchmark_run_has_every_goal_metric_and_its_verdicts():
    """The stored `edgepool bench scheduling` run names every figure the issue asks for, and its verdicts
    follow from its own figures."""
    import json

    from edgepool.benchmarking import load_benchmark

    root = Path(__file__).resolve().parents[1]
    stored = json.loads((root / "benchmarks/results/scheduling/bench-scheduling-2026-12-02.json").read_text())
    bench = load_benchmark("scheduling")
    assert set(bench.GOALS) <= set(stored["metrics"])
    assert stored["goals_met"] == goals_met(stored["metrics"], bench.GOALS)
    assert set(stored["scenarios"]) == set(SCENARIOS)
    for name, report in stored["scenarios"].items():
        assert not set(report["train_seeds"]) & set(report["eval_seeds"]), name  # held-out seeds


@pytest.mark.slow
def test_cli_trains_and_evaluates_a_scenario_into_its_folder(tmp_path):
    import json

    trained = runner.invoke(app, ["schedule", "train", "--scenario", "recslam", "--quick", "--json",
                                  "--out", str(tmp_path / "t")])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output)["scenario"] == "recslam" and (tmp_path / "t" / "train.json").is_file()
    result = runner.invoke(app, ["schedule", "eval", "--scenario", "recslam", "--quick", "--json",
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "recslam_latency_ratio_vs_nearest" in report["metrics"]
    assert json.loads((tmp_path / "e" / "report.json").read_text())["metrics"] == report["metrics"]
    assert all(Path(p).is_file() for p in report["plots"].values())
