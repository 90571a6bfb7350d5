"""The runtime benchmark runs end to end (testbed as root, local otherwise) and reports its metrics."""
from __future__ import annotations

import pytest

from edgepool.benchmarking import load_benchmark


@pytest.mark.slow
def test_runtime_benchmark_quick_reports_ratios_and_simulator_error():
    result = load_benchmark("runtime").run(quick=True, progress=False)
    metrics = result["metrics"]
    for key in ("measured_ratio_hybrid_over_dp", "max_simulator_error", "measured_ratio_hybrid_over_gpipe"):
        assert metrics[key] > 0, key
    assert metrics["max_simulator_error"] == max(metrics[f"simulator_error_{p}"] for p in ("hybrid", "gpipe", "dp"))
    assert set(result["plans"]) == {"hybrid", "gpipe", "dp"}
    assert result["machine"] and result["command"].startswith("edgepool bench runtime")
    efficiency = result["host_calibration"]["quota_efficiency"]
    if result["launcher"].get("launcher") == "testbed":  # every device's speed was probed under its quota
        assert set(efficiency) == set(result["launcher"]["devices"])
        assert all(0 < e <= 1 for e in efficiency.values())
        assert result["host_calibration"]["message_cpu_s"] > 0
    else:
        assert efficiency is None
