"""Real hosts without root: the worker picks the interface that routes to MASTER_ADDR (unless told), a start
that cannot connect ends within the plan's timeout, and `edgepool report gather` builds one report from
per-host result folders. The run across two network namespaces is in test_two_hosts_root.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepool.cli import app
from edgepool.errors import SpecError
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.runtime import ModelSpec, RunOptions, execute
from edgepool.runtime.gather import gather_run
from edgepool.runtime.netif import choose_gloo_interface, interface_towards
from edgepool.runtime.worker import WorkerSpec
from edgepool.testbed.launcher import free_port

TESTS = str(Path(__file__).parent)
TOY = ModelSpec(factory="runtime_toy:tied_mlp", kwargs={"width": 16, "depth": 4}, seed=1)
PLAN = Plan(planner="pipedream", model="tied-mlp", cluster="test", num_layers=4, batch=8, microbatches=2,
            schedule="1f1b", pipelines=[PipelinePlan(stages=[
                StagePlan(layers=(0, 2), devices=["a"], shares=[1.0]),
                StagePlan(layers=(2, 4), devices=["b"], shares=[1.0])])])


def test_the_interface_towards_loopback_is_lo():
    assert interface_towards("127.0.0.1") == "lo"
    assert interface_towards("no-such-host.invalid") is None


def test_gloo_interface_is_chosen_unless_the_user_set_one():
    env = {"MASTER_ADDR": "127.0.0.1"}
    assert choose_gloo_interface(env)[0] == "lo" and env["GLOO_SOCKET_IFNAME"] == "lo"
    env = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "eth7"}  # the override wins, even if odd
    assert choose_gloo_interface(env) == ("eth7", "GLOO_SOCKET_IFNAME=eth7 (set by the user or the launcher)")
    env = {"MASTER_ADDR": "no-such-host.invalid"}
    name, how = choose_gloo_interface(env)
    assert name is None and "GLOO_SOCKET_IFNAME" not in env and "no interface routes" in how


@pytest.mark.slow
def test_a_worker_whose_peers_never_come_ends_within_the_timeout(tmp_path):
    """Before: init_process_group ran outside the try that writes error-rank<N>.txt, and nothing bounded it."""
    spec = WorkerSpec(plan=PLAN.model_dump(mode="json"), model=TOY.to_dict(), steps=1, out_dir=str(tmp_path),
                      timeout_s=4.0)
    spec.save(tmp_path / "spec.json")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
           "WORLD_SIZE": "2", "PYTHONPATH": TESTS}
    env.pop("GLOO_SOCKET_IFNAME", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgepool.runtime.worker", str(tmp_path / "spec.json")],
                          env=env, capture_output=True, text=True, timeout=90)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "GLOO_SOCKET_IFNAME=lo: the interface that routes to MASTER_ADDR=127.0.0.1" in proc.stderr
    assert (tmp_path / "error-rank0.txt").read_text().strip()
    assert elapsed < 4.0 + 5.0 + 30.0  # the timeout, the watchdog's grace, and starting Python with torch


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """A real two-process run; its result files are then split into one folder per "host"."""
    run_dir = tmp_path_factory.mktemp("run")
    outcome = execute(PLAN, None, "local", RunOptions(steps=3, model=TOY, env={"PYTHONPATH": TESTS},
                                                      timeout_s=90, run_dir=run_dir))
    return outcome


def _hosts(outcome, tmp_path: Path) -> list[Path]:
    folders = []
    for rank, device in enumerate(PLAN.devices):
        folder = tmp_path / device / "edgepool-run"
        folder.mkdir(parents=True)
        shutil.copy(outcome.run_dir / f"result-rank{rank}.json", folder)
        shutil.copy(outcome.run_dir / "worker-spec.json", folder)
        folders.append(folder)
    return folders


@pytest.mark.slow
def test_gather_builds_the_report_a_local_run_builds(local_run, tmp_path):
    folders = _hosts(local_run, tmp_path)
    gathered = gather_run(folders)
    assert gathered.report.throughput == pytest.approx(local_run.report.throughput)
    assert gathered.report.metrics["loss_per_step"] == local_run.report.metrics["loss_per_step"]
    assert gathered.report.metrics["launcher"]["launcher"] == "torchrun"
    assert "clocks are not synchronized" in gathered.report.metrics["timeline_clock"]

    out = tmp_path / "gathered"
    result = CliRunner().invoke(app, ["report", "gather", *map(str, folders), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "samples/s" in result.output and "loss" in result.output
    for name in ("report.json", "plan.json", "gantt.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "plan.json").read_text())["planner"] == "pipedream"


@pytest.mark.slow
def test_gather_says_what_is_missing_or_foreign(local_run, tmp_path):
    folders = _hosts(local_run, tmp_path)
    (folders[1] / "result-rank1.json").unlink()
    (folders[1] / "error-rank1.txt").write_text("Traceback ...\nRuntimeError: Gloo connectFullMesh failed\n")
    with pytest.raises(SpecError, match=r"rank 1 \(b\).*error-rank1.txt: RuntimeError: Gloo connectFullMesh"):
        gather_run(folders)
    result = CliRunner().invoke(app, ["report", "gather", *map(str, folders), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "Traceback (most" not in result.output

    shutil.copy(local_run.run_dir / "result-rank0.json", folders[1] / "result-rank1.json")
    with pytest.raises(SpecError, match="result of device 'b'.*another run"):
        gather_run(folders)
    with pytest.raises(SpecError, match="DIR = .*nowhere"):
        gather_run([tmp_path / "nowhere"])
    (folders[0] / "worker-spec.json").unlink()
    with pytest.raises(SpecError, match="worker-spec.json"):
        gather_run(folders[:1])
    # the command line names the flag that gives it (the library names no flag)
    result = CliRunner().invoke(app, ["report", "gather", str(folders[0]), "-o", str(tmp_path / "y")])
    assert result.exit_code == 2 and re.search("worker-spec.json.*--spec plan-run.json", result.output)
