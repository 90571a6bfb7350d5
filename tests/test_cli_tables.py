"""Every rich table the CLI prints stays readable at 80 columns: nothing cut to '…', every row's name whole
(issue 14: `dp-propo…`, `micro-ba…`, and Jetson rows that could not be told apart)."""
from __future__ import annotations

from rich.console import Console
from typer.testing import CliRunner

from edgepool.catalog import list_devices
from edgepool.cli import app
from edgepool.cli.runtime import _comparison_table, _device_table
from edgepool.planners import planner_names
from edgepool.report import DeviceStats, Report

ENV = {"COLUMNS": "80"}


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=ENV)
    assert result.exit_code == 0, result.output
    return result.output


def assert_readable(text: str, names: list[str]) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = [cell.strip() for line in text.splitlines() for cell in line.split("│")]
    for name in names:  # each row's name whole in its own cell, so rows can be told apart
        assert name in cells, (name, text)


def test_devices_at_80_columns_every_name_whole_and_wide_adds_the_rest():
    names = [d.name for d in list_devices()]
    narrow = run("devices")
    assert_readable(narrow, names)
    assert "power modes" not in narrow
    wide = CliRunner().invoke(app, ["devices", "--wide"], env={"COLUMNS": "200"}).output
    assert "power modes" in wide and "MAXN" in wide and "…" not in wide


def test_profile_estimate_plan_compare_and_simulate_at_80_columns(tmp_path):
    assert_readable(run("profile", "gpt2-tiny", "--batch", "2"), ["0:GPT2Embeddings", "5:NormAndHead"])
    assert_readable(run("estimate", "--cluster", "home", "--model", "resnet18"), ["laptop", "jetson", "pi", "phone"])
    compare = run("compare", "--cluster", "home", "--model", "resnet18", "--batch", "8")
    assert_readable(compare, planner_names())
    plan = tmp_path / "plan.json"
    out = run("plan", "--cluster", "home", "--model", "resnet18", "--batch", "8", "--planner", "gpipe", "-o",
              str(plan))
    assert "…" not in out and "0 (100% of batch)" in out
    assert_readable(run("simulate", str(plan), "--cluster", "home"), ["laptop", "jetson", "pi", "phone"])


def test_runtime_tables_at_80_columns():
    rows = [{"planner": name, "stages": [1, 1], "devices": ["phone", "jetson", "laptop"], "microbatches": 16,
             "simulated_throughput": 53.93, "measured_throughput": 45.97, "simulator_error": 0.17}
            for name in [*planner_names(), "phone alone"]]
    console = Console(width=80, record=True)
    console.print(_comparison_table("planners in simulation (emulated home cluster)", rows))
    stats = DeviceStats(busy_s=1.234, utilization=0.93, peak_memory_bytes=512 * 2**20, memory_limit_bytes=8 * 2**30,
                        energy_j=12.5)
    report = Report(source="measured", where="test", planner="hybrid",
                    per_device={n: stats for n in ("laptop", "jetson", "phone")})
    console.print(_device_table(report))
    assert_readable(console.export_text(), [*planner_names(), "phone alone", "laptop", "jetson", "phone"])


def test_serve_sim_table_at_80_columns():
    assert_readable(run("serve-sim", "--requests", "20"), ["vllm", "padding", "padding-cost"])
