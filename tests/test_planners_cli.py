"""`edgepool plan`, `simulate` and `compare` end to end on a tiny model, and the planner benchmark's keys."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepool.cli import app

runner = CliRunner()


def test_plan_simulate_compare(tmp_path):
    plan_path = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "--cluster", "home", "--model", "mobilenet_v2", "--batch", "8",
                                 "--planner", "hybrid", "-o", str(plan_path), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["planner"] == "hybrid" and plan["predicted"]["throughput"] > 0
    assert json.loads(plan_path.read_text()) == plan

    gantt = tmp_path / "gantt.png"
    result = runner.invoke(app, ["simulate", str(plan_path), "--cluster", "home", "--gantt", str(gantt), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["source"] == "simulated" and report["throughput"] > 0
    assert gantt.stat().st_size > 1000

    result = runner.invoke(app, ["compare", "--cluster", "home", "--model", "mobilenet_v2", "--batch", "8", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["planner"]: r for r in json.loads(result.output)["rows"]}
    assert {"dp", "gpipe", "pipedream", "hybrid", "dmp"} <= set(rows)
    assert rows["dp"]["speedup_over_dp"] == pytest.approx(1.0)


def test_bad_input_names_the_field(tmp_path):
    result = runner.invoke(app, ["plan", "--cluster", "home", "--model", "mobilenet_v2", "--batch", "8",
                                 "--planner", "magic"])
    assert result.exit_code == 2 and "planner" in result.output and "hybrid" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = runner.invoke(app, ["simulate", str(bad), "--cluster", "home"])
    assert result.exit_code == 2 and "error" in result.output


@pytest.mark.slow
def test_benchmark_quick_has_the_metrics():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import planners as bench
    result = bench.run(quick=True, progress=False)
    for key in ("min_ratio_hybrid_over_best_baseline", "min_ratio_hybrid_over_dp_100mbps", "plan_seconds_64_devices"):
        assert result["metrics"][key] is not None
    assert result["benchmark"] == "planners" and "machine" in result and "command" in result
    assert bench.render(result)
