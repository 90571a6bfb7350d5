"""`edgepool graph infer|layout` (bad input, a small layout) and the graph benchmark's figures from its stored run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepool.benchmarking import load_benchmark
from edgepool.cli import app
from edgepool.graph.experiment import infer_metrics

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "benchmarks" / "results" / "graph" / "bench-graph-2026-12-02.json"
runner = CliRunner()


@pytest.mark.parametrize("args,needle", [
    (["infer", "--graph", "cora"], "--graph = 'cora'"),
    (["infer", "--model", "gin"], "--model = 'gin'"),
    (["infer", "--compression", "int2"], "--compression = 'int2'"),
    (["infer", "--launcher", "ssh"], "--launcher = 'ssh'"),
    (["infer", "--vertices", "5"], "vertices = 5"),
    (["layout", "--method", "best"], "--method = 'best'"),
    (["layout", "--access", "satellite"], "--access = 'satellite'"),
    (["layout", "--vertices", "1"], "--vertices = 1"),
    (["layout", "--vertices", "100", "--method", "exact"], "vertices"),
])
def test_bad_input_is_one_line_naming_the_field(args, needle, tmp_path):
    result = runner.invoke(app, ["graph", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    assert needle in text, text
    assert not (tmp_path / "out" / "report.json").exists()


def test_layout_of_a_small_graph_is_exact_and_drawn(tmp_path):
    result = runner.invoke(app, ["graph", "layout", "--vertices", "30", "--devices", "6", "--edge-servers", "2",
                                 "--method", "exact", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert sum(report["tier_counts"].values()) == 30
    assert report["cost"]["total"] == pytest.approx(sum(report["cost"][k] for k in ("compute", "storage",
                                                                                   "communication")))
    assert Path(report["plot"]).is_file() and (tmp_path / "report.json").is_file()
    graphcut = json.loads(runner.invoke(app, ["graph", "layout", "--vertices", "30", "--devices", "6",
                                              "--edge-servers", "2", "--out", str(tmp_path), "--json"]).output)
    assert graphcut["cost"]["total"] >= report["cost"]["total"] * (1 - 1e-9)  # exact is a lower bound


def test_stored_run_metrics_follow_their_definitions():
    """The stored benchmark's headline figures recomputed from its own per-run measurements."""
    stored = json.loads(STORED.read_text())
    recomputed = infer_metrics(stored["fograph"])
    for name, value in recomputed.items():
        assert stored["metrics"][name] == pytest.approx(value), name
    runs = stored["fograph"]["runs"]
    chosen = runs[f"fograph-{stored['fograph']['fograph_choice']}"]
    assert stored["metrics"]["fograph_speedup_vs_cloud"] == pytest.approx(
        runs["cloud"]["latency_mean_s"] / chosen["latency_mean_s"])
    assert all(r["matches_in_process"] for r in runs.values())
    assert stored["fograph"]["where"]["launcher"] == "testbed"
    text = load_benchmark("graph").render(stored)
    for name in ("fograph_speedup_vs_cloud", "layout_gap_vs_exact", "incremental_speedup_vs_recompute"):
        assert name in text
