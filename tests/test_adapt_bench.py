"""`edgepool bench adapt --quick`: every metric the issue names, from one real (small) run, and its plots."""
from __future__ import annotations

import math

import pytest

from edgepool.benchmarking import load_benchmark

METRICS = ("sparse_memory_saving_vs_full", "sparse_step_speedup_vs_full", "sparse_accuracy_gap_vs_full",
           "compiled_step_speedup_vs_eager", "cema_accuracy_gain_vs_no_adaptation", "cema_upload_fraction",
           "cema_accuracy_gap_vs_upload_all", "cema_accuracy_gain_vs_random_upload")


@pytest.mark.slow
def test_quick_run_reports_every_metric_and_draws(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPOOL_BENCH_OUT", str(tmp_path))
    monkeypatch.setenv("EDGEPOOL_ADAPT_CACHE", str(tmp_path / "cache"))
    bench = load_benchmark("adapt")
    result = bench.run(quick=True, progress=False)
    metrics = result["metrics"]
    assert all(isinstance(metrics[k], float) and math.isfinite(metrics[k]) for k in METRICS), metrics
    assert 0 < metrics["sparse_memory_saving_vs_full"] < 1  # sparse keeps less for backward, not nothing
    assert 0 < metrics["cema_upload_fraction"] < 1
    link = result["cema_over_link"]
    assert link["link"]["uploads_sent"] == link["cloud"]["uploads"] > 0
    for plot in result["plots"].values():
        assert (tmp_path / plot.split("/")[-1]).stat().st_size > 10_000
    assert "CEMA over the link" in bench.render(result)
