"""The split benchmark's metrics from a known table and a known sweep (the run itself is `edgepool bench
split`; its parts are tested in test_split*.py)."""
from __future__ import annotations

import pytest

from edgepool.benchmarking import load_benchmark
from edgepool.split.latency import LatencyMeasure, LatencySweep
from edgepool.split.options import OptionMeasure, SplitOption

bench = load_benchmark("split")


def _row(location, method, acc, size, level="", cut=None, device_s=0.06, server_s=0.0):
    return OptionMeasure(SplitOption(location, method, level, 224, cut), acc, size, device_s, server_s)


ROWS = [_row("device", "local", 0.90, 0),
        _row("server", "png", 0.90, 60_000, device_s=0.01, server_s=0.06),
        _row("server", "webp", 0.895, 40_000, "lossless", device_s=0.03, server_s=0.06),
        _row("server", "jpeg", 0.70, 5_000, "q50", device_s=0.003, server_s=0.06),
        _row("split", "entropic", 0.892, 3_000, "b8", 8, device_s=0.05, server_s=0.02),
        _row("split", "bottlefit", 0.80, 2_000, "b4", 8, device_s=0.05, server_s=0.02)]


def test_bytes_are_compared_at_equal_accuracy():
    rate = bench._rate_metrics(ROWS)
    assert rate["codec"] == "offload-webp-lossless" and rate["bottleneck"] == "split-entropic-cut8-b8"
    assert rate["bytes_ratio"] == pytest.approx(3_000 / 40_000)
    assert rate["loss_points"] == pytest.approx(0.8) and rate["within_one_point"]
    worse = [r for r in ROWS if r.option.method != "entropic"]  # no bottleneck within a point
    rate = bench._rate_metrics(worse)
    assert not rate["within_one_point"] and rate["bottleneck"] == "split-bottlefit-cut8-b4"
    assert rate["codec"] == "offload-webp-lossless"  # the cheapest codec at >= 80% (JPEG q50 has 70%)


def _sweep(latencies: dict[str, dict[float, float]]) -> LatencySweep:
    """Every option's latency; compute seconds: the device 10x the table's, the server 2x."""
    bws = sorted({bw for per in latencies.values() for bw in per})
    table = {r.option.name: r for r in ROWS}
    return LatencySweep([LatencyMeasure(name, bw, [s], 0, device_s=[table[name].device_s * 10],
                                        server_s=[table[name].server_s * 2])
                         for name, per in latencies.items() for bw, s in per.items()], bws)


def test_latency_ratio_and_planner_regret_use_measured_latencies():
    sweep = _sweep({"local": {2e6: 0.40, 50e6: 0.40}, "offload-png": {2e6: 0.70, 50e6: 0.20},
                    "split-entropic-cut8-b8": {2e6: 0.30, 50e6: 0.33}})
    latency = bench._latency_metrics(ROWS, sweep, 2e6)
    assert latency["split"] == "split-entropic-cut8-b8" and latency["baseline"] == "local"
    assert latency["ratio"] == pytest.approx(0.30 / 0.40)
    regret = bench._planner_regret(ROWS, sweep)
    assert regret["calibration"]["device_slowdown"] == pytest.approx(10)
    assert regret["calibration"]["server_slowdown"] == pytest.approx(2)
    assert set(regret["per_bandwidth"]) == {"2Mbps", "50Mbps"}
    for per in regret["per_bandwidth"].values():
        assert per["regret"] == pytest.approx(per["measured_s"] / per["best_s"]) and per["regret"] >= 1
    assert regret["max"] == max(p["regret"] for p in regret["per_bandwidth"].values())
