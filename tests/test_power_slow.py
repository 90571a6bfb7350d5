"""Power: real profiling across emulated modes (root: cgroup quota) and the benchmark's quick run."""
from __future__ import annotations

import os

import numpy as np
import pytest

from edgepool.power import profiler
from edgepool.power.modes import local_mode_space, quick_local_mode_space
from edgepool.power.workloads import Workload

SMALL = Workload("mlp-small-train", "mlp", "train", batch=32, overrides={"width": 256, "depth": 2})


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="emulating CPU frequency writes cgroup v1 cpu quotas (needs root)")
def test_cpu_quota_mode_is_measurably_slower_and_cgroup_is_removed():
    space = local_mode_space()
    slow, fast = (1.0, 1.0, 0.25), (1.0, 1.0, 1.0)
    table = profiler.profile_modes(space, [SMALL], modes=[slow, fast], min_block_s=0.05)
    times = table.series(SMALL.name)
    assert times[slow] > 2.0 * times[fast], times
    assert all("modelled" in r["power_source"] for r in table.rows)
    from edgepool.testbed.cgroups import own_cgroup_dir

    assert not (own_cgroup_dir("cpu") / f"edgepool-power-{os.getpid()}").exists()


@pytest.mark.slow
def test_without_cgroups_only_full_speed_modes_run(monkeypatch):
    monkeypatch.setattr(profiler, "cgroup_unavailable_reason", lambda: "no cgroups in this test")
    messages = []
    space = quick_local_mode_space()
    table = profiler.profile_modes(space, [SMALL], min_block_s=0.02, log=messages.append)
    assert {tuple(r["mode"])[2] for r in table.rows} == {1.0}
    assert len(table.rows) == 4 and "no cgroups in this test" in messages[0]


def _synthetic_table(space) -> profiler.ProfileTable:
    """A stand-in for measured profiles so the benchmark's pipeline runs fast in tests."""
    from edgepool.power.power_model import local_power_model
    from edgepool.power.workloads import INFERENCE, REFERENCE, TARGETS

    rng = np.random.default_rng(0)
    pm = local_power_model(space)
    rows = []
    for j, w in enumerate([REFERENCE, *TARGETS, *INFERENCE]):
        for mode in space.modes():
            cores, threads, frac = mode
            t = (0.01 + 0.005 * j) / (min(cores, threads) * frac ** (0.8 + 0.05 * j))
            rows.append({"workload": w.name, "mode": list(mode), "time_s": t * (1 + 0.02 * rng.standard_normal()),
                         "power_w": pm.power(space, mode), "power_source": "modelled"})
    return profiler.ProfileTable(space=space.name, dims=space.dim_names, rows=rows, meta={"date": "synthetic"})


@pytest.mark.slow
def test_benchmark_quick_reports_the_issue_metrics(tmp_path, monkeypatch):
    from edgepool.benchmarking import load_benchmark

    _synthetic_table(quick_local_mode_space()).save(tmp_path / "profiles-quick.json")
    monkeypatch.setenv("EDGEPOOL_POWER_RESULTS", str(tmp_path))
    module = load_benchmark("power")
    result = module.run(quick=True, progress=False)
    m = result["metrics"]
    for key in ("mape_transfer_50", "gmd_fraction_of_optimum", "als_fraction_of_optimum",
                "max_fraction_of_modes_profiled", "mape_scratch_10", "mape_linear_25"):
        assert key in m and np.isfinite(m[key])
    assert 0 < m["max_fraction_of_modes_profiled"] <= 0.1 + 1e-9
    assert 0 < m["gmd_fraction_of_optimum"] <= 1 and 0 < m["als_fraction_of_optimum"] <= 1
    assert "cached" in result["notes"]["profiles"]
    assert "PowerTrain" in module.render(result)


@pytest.mark.slow
def test_cli_pareto_writes_json_and_plot(tmp_path):
    import json

    from typer.testing import CliRunner

    from edgepool.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["power", "modes", "--device", "jetson-agx-orin"])
    assert shown.exit_code == 0 and json.loads(shown.output)["modes"] == 4368
    bad = runner.invoke(app, ["power", "modes", "--device", "no-such-board"])
    assert bad.exit_code != 0 and "no-such-board" in bad.output  # one line for the user, not a traceback
    assert "Traceback" not in bad.output
    out = tmp_path / "pareto"
    done = runner.invoke(app, ["power", "pareto", "--model", "bert-tiny", "--batch", "8", "--budget", "20",
                               "--latency", "0.05", "--out", str(out)])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "pareto.json").read_text())
    assert result["source"].startswith("simulated") and result["fastest_within_budget"]["power_w"] <= 20
    times = [p["time_s"] for p in result["pareto_front"]]
    assert times == sorted(times) and (out / "pareto.png").stat().st_size > 1000
