"""`edgepool bench finetune --quick`: every method runs in its own process and the metrics are computed."""
from __future__ import annotations

import math

import pytest

from edgepool.benchmarking import load_benchmark


@pytest.mark.slow
def test_quick_benchmark_reports_the_issue_metrics():
    result = load_benchmark("finetune").run(quick=True, progress=False)
    metrics = result["metrics"]
    for key in ("pac_speedup_over_lora", "pac_memory_saving_vs_lora", "accuracy_gap_vs_lora"):
        assert key in metrics and math.isfinite(metrics[key])
    assert 0.0 < metrics["pac_memory_saving_vs_lora"] < 1.0
    assert result["methods"]["pac"]["epoch_backbone_forward_samples"][1:] == [0, 0]
    assert all(n > 0 for n in result["methods"]["adapters"]["epoch_backbone_forward_samples"])
    assert result["benchmark"] == "finetune" and result["command"].startswith("edgepool bench finetune")
