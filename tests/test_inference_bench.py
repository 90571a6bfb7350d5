"""The inference benchmark's quick mode runs end to end and reports the metrics the issue names."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_benchmark_reports_its_metrics():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(quick=True, progress=False)
    assert result["benchmark"] == "inference"
    for key in ("speedup_over_best_single_bert512_1gbps", "min_ratio_even_tp_over_plan"):
        assert result["metrics"][key] > 0
    row = result["cases"]["bert512_1gbps"]
    assert set(row["plans"]) == {"planner", "even_tp", "pipeline", "best_single"}
    assert all(p["simulator_error"] is not None for p in row["plans"].values())
    assert "machine" in result and "command" in result and result["launcher"]
