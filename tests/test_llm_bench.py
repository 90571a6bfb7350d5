"""The LLM benchmark's quick mode runs end to end (testbed as root, local processes otherwise) and reports the
metrics issue 16 names, with every configuration measured and predicted."""
from __future__ import annotations

import json

import pytest

from edgepool.benchmarking import load_benchmark

METRICS = ("concurrent_tokens_per_s_ratio_vs_best_single", "single_stream_latency_ratio_vs_best_single",
           "ratio_vs_memory_weighted_split", "greedy_mismatches", "requests_lost_on_kill",
           "simulator_error_tokens_per_s")


@pytest.mark.slow
def test_quick_llm_benchmark_reports_its_metrics():
    module = load_benchmark("llm")
    result = module.run(quick=True, progress=False)
    json.dumps(result)  # one JSON-serializable object
    assert result["benchmark"] == "llm" and result["quick"]
    metrics = result["metrics"]
    for key in METRICS:
        assert key in metrics and metrics[key] is not None, key
    for key in ("concurrent_tokens_per_s_ratio_vs_best_single", "single_stream_latency_ratio_vs_best_single",
                "ratio_vs_memory_weighted_split"):
        assert metrics[key] > 0, key
    assert metrics["simulator_error_tokens_per_s"] >= 0
    assert metrics["greedy_mismatches"] == 0 and metrics["requests_lost_on_kill"] == 0
    one = result["links"]["1gbps"]
    assert set(one["configurations"]) == {"planner", "best_single", "memory_weighted", "even_split"}
    for row in one["configurations"].values():
        for workload in ("concurrent", "single_stream"):
            assert row[workload]["measured"]["tokens_per_s"] > 0
            assert row[workload]["predicted"]["tokens_per_s"] > 0
            assert row[workload]["plan"]["stages"]
    kill = one["kill"]
    assert len(kill["plan"]["stages"]) >= 2 and kill["pool_events"], "a device was killed and the pool re-planned"
    assert result["machine"] and result["command"].startswith("edgepool bench llm")
    assert result["launcher"] and result["figure"].endswith(".png")
    assert module.render(result)
