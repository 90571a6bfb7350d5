"""`edgepool bench precision`: its metrics from known rows, and a quick real run (slow)."""
from __future__ import annotations

import math

import pytest

from edgepool.benchmarking import load_benchmark
from edgepool.precision.experiment import PolicyRow

bench = load_benchmark("precision")


def _row(policy, floor, test_acc, ms, mj=1.0):
    return PolicyRow("t", "d", floor, policy, "", test_acc, test_acc, ms, mj, 0, 0, 0, 0, 0, 0.0, 0)


ROWS = [_row("all-cpu", None, 0.90, 10.0, 50.0), _row("all-accelerator", None, 0.85, 1.0, 2.0),
        _row("mlmp min-time", 1.0, 0.895, 4.0), _row("mlmp max-accuracy", 1.0, 0.893, 3.0),
        _row("ours (lagrangian)", 1.0, 0.892, 2.0, 10.0), _row("rl (ppo)", 1.0, 0.891, 2.5),
        _row("oracle", 1.0, 0.892, 1.9), _row("input-dependent", 1.0, 0.891, 1.5)]


def test_case_metrics_follow_the_issue_definitions():
    case = bench.case_metrics(ROWS, 1.0)
    assert case["time_ratio_vs_mlmp_min_time"] == pytest.approx(2.0 / 4.0)
    assert case["accuracy_gain_points_vs_all_accelerator"] == pytest.approx(4.2)
    assert case["fraction_of_oracle"] == pytest.approx(1.9 / 2.0) and case["best_policy"] == "ours (lagrangian)"
    assert case["energy_ratio_vs_all_cpu"] == pytest.approx(10.0 / 50.0)
    assert case["input_dependent_gain"] == pytest.approx(1 - 1.5 / 2.0)
    summary = bench.summarize([case, {**case, "all_accelerator_loss_points": 0.5,
                                      "accuracy_gain_points_vs_all_accelerator": -1.0}])
    assert summary["accuracy_gain_points_vs_all_accelerator"] == pytest.approx(4.2)  # only where acc loses >= 2


@pytest.mark.slow
def test_quick_run_reports_every_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPOOL_BENCH_OUT", str(tmp_path))
    result = bench.run(quick=True, progress=False)
    metrics = result["metrics"]
    for name in ("time_ratio_vs_mlmp_min_time", "fraction_of_oracle", "energy_ratio_vs_all_cpu",
                 "input_dependent_gain"):
        assert metrics[name] is not None and math.isfinite(metrics[name]), name
    assert "accuracy_gain_points_vs_all_accelerator" in metrics
    assert len(result["cases"]) == 2 * len(bench.DEVICES)  # two floors per device
    for case in result["cases"]:
        assert case["fraction_of_oracle"] <= 1 + 1e-9  # nothing beats the exhaustive oracle on digits
    assert (tmp_path / "precision.json").is_file()
    assert all((tmp_path / f"precision-digits-cnn-{d}.png").is_file() for d in bench.DEVICES)
