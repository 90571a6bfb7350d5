"""Testbed pieces that need no root: CPU/memory limits, the shaping plan, launcher fallback, local launcher."""
from __future__ import annotations

import sys

import pytest

from edgepool.catalog import get_device
from edgepool.cluster import Cluster, load_cluster
from edgepool.errors import SpecError
from edgepool.testbed import Emulation, LocalLauncher, WorkerFailed, device_limits, emulated_cluster, make_launcher
from edgepool.testbed.shaping import WIRE_OVERHEAD, rate_arg, shaping_plan


def _device(name: str, gflops: float, memory_gib: float = 4.0):
    return get_device("rpi5").model_copy(update={"name": name, "peak_flops": {"fp32": gflops * 1e9},
                                                  "efficiency": 1.0, "memory_bytes": int(memory_gib * 2**30)})


def test_cpu_quota_follows_relative_speed_and_fits_the_budget():
    cluster = load_cluster("home")
    limits = device_limits(cluster, list(cluster.devices), cpu_budget=2)
    fastest = max(limits, key=lambda n: limits[n].relative_speed)
    assert limits[fastest].cpu_cores == pytest.approx(1.0)
    for name, lim in limits.items():
        if lim.cpu_cores > 0.02:
            assert lim.cpu_cores == pytest.approx(lim.relative_speed)
        assert lim.memory_bytes == cluster.devices[name].memory_bytes
    assert sum(l.cpu_cores for l in limits.values()) <= 2 + 1e-9


def test_quotas_scale_down_together_when_over_budget_and_keep_a_floor():
    cluster = Cluster.uniform([_device(f"d{i}", 10.0) for i in range(4)] + [_device("tiny", 0.01)], 1e6)
    limits = device_limits(cluster, list(cluster.devices), cpu_budget=2, min_cores=0.05, memory_scale=0.5)
    assert limits["d0"].cpu_cores == pytest.approx(limits["d3"].cpu_cores)
    assert sum(limits[f"d{i}"].cpu_cores for i in range(4)) <= 2 + 1e-9
    assert limits["d0"].cpu_cores < 1.0  # four equal devices on two cores: scaled down
    assert limits["tiny"].cpu_cores == 0.05
    assert limits["d0"].memory_bytes == 2 * 2**30
    assert device_limits(cluster, ["d0"], memory_scale=None)["d0"].memory_bytes is None


def test_shaping_plan_covers_every_ordered_pair_with_its_link_and_medium():
    cluster = load_cluster("home")
    plan = shaping_plan(cluster, list(cluster.devices))
    assert len(plan.pairs) == 4 * 3
    by_pair = {(p.src, p.dst): p for p in plan.pairs}
    assert by_pair["laptop", "jetson"].bandwidth == cluster.link("laptop", "jetson").bandwidth
    assert by_pair["laptop", "jetson"].medium is None
    assert by_pair["pi", "phone"].medium == "wifi"
    assert plan.media == {"wifi": cluster.medium_capacity("wifi")}
    assert "not emulated" in plan.describe()["latency"]
    assert rate_arg(1e6) == f"{int(8e6 * WIRE_OVERHEAD)}bit"


def test_testbed_falls_back_to_local_with_the_reason(monkeypatch, caplog):
    monkeypatch.setattr("edgepool.testbed.system.unavailable_reason", lambda: "needs root (test)")
    launcher = make_launcher("testbed", load_cluster("home"))
    assert isinstance(launcher, LocalLauncher)
    assert launcher.fallback_reason == "needs root (test)"
    assert "Falling back to the local launcher" in caplog.text
    with pytest.raises(Exception, match="needs root"):
        make_launcher("testbed", load_cluster("home"), fallback=False)
    with pytest.raises(SpecError, match="launcher"):
        make_launcher("ssh")


def test_local_launcher_sets_the_distributed_environment(tmp_path):
    code = ("import os; print(' '.join(os.environ[k] for k in "
            "('RANK','WORLD_SIZE','MASTER_ADDR','GLOO_SOCKET_IFNAME','EDGEPOOL_DEVICE','EXTRA')))")
    with LocalLauncher() as launcher:
        launcher.launch({"a": [sys.executable, "-c", code], "b": [sys.executable, "-c", code]},
                        env={"EXTRA": "x"}, log_dir=tmp_path)
        assert launcher.wait(timeout=30) == {"a": 0, "b": 0}
    assert (tmp_path / "rank0-a.log").read_text().split() == ["0", "2", "127.0.0.1", "lo", "a", "x"]
    assert (tmp_path / "rank1-b.log").read_text().split()[:2] == ["1", "2"]


def test_a_crashed_local_worker_stops_the_others(tmp_path):
    with LocalLauncher() as launcher:
        handles = launcher.launch({"ok": [sys.executable, "-c", "import time; time.sleep(60)"],
                                   "bad": [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]},
                                  log_dir=tmp_path)
        with pytest.raises(WorkerFailed, match="exit status 3") as info:
            launcher.wait(timeout=30)
        assert info.value.device == "bad" and "boom" in info.value.log_tail
        assert handles[0].poll() is not None  # the sleeper was stopped


def test_a_worker_traceback_becomes_one_line_with_the_cause_and_the_log(tmp_path):
    crash = "def f():\n    raise IndexError('index out of range in self')\nf()"
    with LocalLauncher() as launcher:
        launcher.launch({"pi": [sys.executable, "-c", crash]}, log_dir=tmp_path)
        with pytest.raises(WorkerFailed) as info:
            launcher.wait(timeout=30)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "device 'pi'" in message and "exit status 1" in message
    assert "IndexError: index out of range in self" in message and str(tmp_path / "rank0-pi.log") in message
    assert "Traceback" in info.value.log_tail  # the rest stays in the log


def test_emulated_cluster_is_the_host_core_scaled_by_each_quota():
    cluster = load_cluster("home")
    limits = device_limits(cluster, ["laptop", "pi", "phone"], cpu_budget=2)
    host = _device("host-core", 20.0).model_copy(update={"memory_bandwidth": 5e9, "efficiency": 0.5})
    emu = emulated_cluster(cluster, Emulation.of_limits(limits, bandwidth_scale=0.5), host)
    assert list(emu.devices) == ["laptop", "pi", "phone"]
    assert emu.devices["phone"].peak("fp32") == pytest.approx(20e9 * limits["phone"].cpu_cores)
    assert emu.devices["pi"].peak("fp32") / emu.devices["phone"].peak("fp32") == pytest.approx(
        limits["pi"].cpu_cores / limits["phone"].cpu_cores)
    assert emu.devices["pi"].efficiency == 0.5
    link = emu.link("laptop", "pi")
    assert link.latency_s == 0.0 and link.bandwidth == cluster.link("laptop", "pi").bandwidth * 0.5
    assert emu.media["wifi"] == cluster.media["wifi"] * 0.5
    assert cluster.link("laptop", "pi").latency_s > 0  # the original is untouched


def test_starting_a_testbed_where_it_cannot_run_says_why_and_leaves_nothing(monkeypatch):
    from edgepool.testbed import Testbed, TestbedUnavailable

    monkeypatch.setattr("edgepool.testbed.system.unavailable_reason", lambda: "needs root (test)")
    testbed = Testbed(load_cluster("home"))
    with pytest.raises(TestbedUnavailable, match="needs root"):
        with testbed:
            pass
    assert not testbed._prev_handlers  # signal handlers were not left installed


def test_cfs_period_is_short_unless_the_quota_would_fall_under_the_kernel_floor():
    from edgepool.testbed.cgroups import MIN_QUOTA_US, DeviceCgroup

    quarter = DeviceCgroup("q", cpu_cores=0.25, memory_bytes=None)
    assert (quarter.period_us, quarter.quota_us) == (10_000, 2_500)
    whole = DeviceCgroup("w", cpu_cores=1.0, memory_bytes=None)
    assert whole.quota_us == whole.period_us == 10_000
    tiny = DeviceCgroup("t", cpu_cores=0.02, memory_bytes=None)  # 0.02 x 10 ms would be 0.2 ms
    assert tiny.quota_us == MIN_QUOTA_US and tiny.quota_us / tiny.period_us == pytest.approx(0.02)
    slowest = DeviceCgroup("s", cpu_cores=0.005, memory_bytes=None)
    assert slowest.period_us == 100_000 and slowest.quota_us == MIN_QUOTA_US  # clamped at the floor
