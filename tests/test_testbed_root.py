"""The emulated testbed for real: teardown leaves nothing, CPU quotas slow workers, tc limits bandwidth,
and torch.distributed (gloo) works across the namespaces. Needs root, iproute2 and cgroup v1 (CI has them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from edgepool.catalog import get_device
from edgepool.cluster import Cluster, load_cluster
from edgepool.testbed import Testbed, WorkerFailed, unavailable_reason
from edgepool.testbed.netns import list_namespaces
from edgepool.testbed.testbed import STATE_DIR

_reason = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(_reason is not None, reason=f"testbed unavailable: {_reason}")]

PY = sys.executable


def _device(name: str, gflops: float):
    return get_device("rpi5").model_copy(update={"name": name, "peak_flops": {"fp32": gflops * 1e9},
                                                  "efficiency": 1.0})


def _root_state() -> tuple[set[str], str]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip() for line in links.splitlines()}, qdiscs


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def _assert_nothing_left(tb: Testbed, marker: str, root_before) -> None:
    assert tb.leftovers() == {"namespaces": [], "cgroups": [], "processes": []}
    assert not [ns for ns in list_namespaces() if tb.run_id in ns]
    assert not _processes_with(marker), "worker processes (or their children) survived teardown"
    links_before, qdiscs_before = root_before
    links_after, qdiscs_after = _root_state()
    assert links_after - links_before == set(), "an interface was left in the root namespace"
    assert qdiscs_after == qdiscs_before
    assert not (STATE_DIR / f"{tb.run_id}.json").exists()
    assert tb.teardown_errors == []


def _sleeper(marker: str) -> list[str]:
    # a worker with a child process, both alive until killed: teardown must catch the child too
    code = ("import subprocess, sys, time; "
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '{marker}']); time.sleep(30)")
    return [PY, "-c", code, marker]


def test_teardown_after_a_worker_is_killed_mid_run():
    cluster = load_cluster("home")  # 4 devices, wired zone + shared Wi-Fi medium
    marker = f"edgepool-test-{uuid.uuid4().hex}"
    before = _root_state()
    with pytest.raises(WorkerFailed, match="signal 9"):
        with Testbed(cluster) as tb:
            handles = tb.launch({n: _sleeper(marker) for n in tb.devices})
            deadline = time.monotonic() + 20  # the pi runs at 0.03 core: starting Python takes it a while
            while len(_processes_with(marker)) < 2 * len(handles) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(_processes_with(marker)) == 2 * len(handles)  # workers and their children
            cgroup_pids = set().union(*(cg.pids() for cg in tb.cgroups.values()))
            assert {h.pid for h in handles} <= cgroup_pids  # every worker runs inside its device's cgroup
            assert list_namespaces(f"edgepool-{tb.run_id}-") and tb.leftovers()["cgroups"]
            os.kill(handles[2].pid, signal.SIGKILL)
            tb.wait(timeout=20)
    _assert_nothing_left(tb, marker, before)


def test_teardown_after_a_normal_exit():
    cluster = load_cluster("home")
    marker = f"edgepool-test-{uuid.uuid4().hex}"
    before = _root_state()
    with Testbed(cluster) as tb:
        tb.launch({n: [PY, "-c", "print('done')", marker] for n in tb.devices})
        assert tb.wait(timeout=20) == {n: 0 for n in cluster.devices}
    _assert_nothing_left(tb, marker, before)


OWNER = textwrap.dedent("""
    import json, subprocess, sys, time
    from edgepool.cluster import load_cluster
    from edgepool.testbed import Testbed
    tb = Testbed(load_cluster("home"), devices=["laptop", "pi"])
    tb.start()
    tb.launch({n: [sys.executable, "-c", "import time; time.sleep(30)", sys.argv[1]] for n in tb.devices})
    print(json.dumps({"run_id": tb.run_id, "pids": [h.pid for h in tb.handles]}), flush=True)
    time.sleep(30)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_owner_interrupted_or_killed_leaves_nothing(signum):
    """Ctrl-C and SIGTERM tear down at once; after SIGKILL the next testbed removes the leftovers."""
    marker = f"edgepool-test-{uuid.uuid4().hex}"
    owner = subprocess.Popen([PY, "-c", OWNER, marker], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(owner.stdout.readline())
    prefix = f"edgepool-{info['run_id']}-"
    assert list_namespaces(prefix)
    time.sleep(0.3)
    assert len(set(_processes_with(marker)) - {owner.pid}) == 2  # the two workers
    owner.send_signal(signum)
    owner.wait(timeout=20)
    if signum == signal.SIGKILL:
        assert list_namespaces(prefix), "nothing to clean up: the test proves nothing"
        with Testbed(load_cluster("home"), devices=["laptop"]) as tb:
            assert any(info["run_id"] in item for item in tb.removed_leftovers)
    assert not list_namespaces(prefix)
    assert not [p for p in Path("/sys/fs/cgroup/cpu").rglob(f"{prefix}*")]
    assert not _processes_with(marker)


def test_the_memory_limit_makes_an_oversized_worker_fail():
    small = _device("small", 10).model_copy(update={"memory_bytes": 128 * 2**20})
    cluster = Cluster.uniform([small, _device("big", 10)], bandwidth=1e8)
    grab = "import time; x = bytearray(300 * 2**20); x[::4096] = b'x' * len(x[::4096]); time.sleep(5)"
    with Testbed(cluster, cpu_budget=2) as tb:
        tb.launch({"small": [PY, "-c", grab], "big": [PY, "-c", "import time; time.sleep(30)"]})
        with pytest.raises(WorkerFailed, match="OOM killer.*0.12 GiB") as info:
            tb.wait(timeout=30)
    assert info.value.device == "small"


BUSY = textwrap.dedent("""
    import time
    w0, c0 = time.perf_counter(), time.process_time(); x = 0
    for i in range(3_000_000):
        x += i
    print(time.perf_counter() - w0, time.process_time() - c0)
""")


def test_cpu_quota_really_slows_a_worker():
    cluster = Cluster.uniform([_device("fast", 40.0), _device("slow", 10.0)], bandwidth=1e8)
    with Testbed(cluster, cpu_budget=2, max_cores_per_device=1.0) as tb:
        assert tb.limits["slow"].cpu_cores == pytest.approx(0.25)
        for cgroup in tb.cgroups.values():  # device cgroups outweigh other jobs on a shared host
            assert int((cgroup.path("cpu") / "cpu.shares").read_text()) > 1024
        runs = {}
        for name in ("fast", "slow", "fast"):  # fast twice: the slower of its runs is the baseline
            out = tb.run_in(name, [PY, "-c", BUSY], capture_output=True, text=True, check=True).stdout
            runs.setdefault(name, []).append([float(v) for v in out.split()])
        throttled = (tb.cgroups["slow"].path("cpu") / "cpu.stat").read_text()
    fast_wall, fast_cpu = max(runs["fast"])
    slow_wall, slow_cpu = runs["slow"][0]
    print(f"busy loop: 1 core {fast_wall:.3f} s (got {fast_cpu / fast_wall:.2f} core), 0.25 core {slow_wall:.3f} s "
          f"(got {slow_cpu / slow_wall:.2f} core), ratio {slow_wall / fast_wall:.2f}")
    # the quota is a hard cap whatever else runs on the host
    assert slow_cpu / slow_wall < 0.3
    assert int(throttled.split("nr_throttled")[1].split()[0]) > 0
    fast_share = fast_cpu / fast_wall
    if fast_share < 0.5:
        pytest.skip(f"host too busy for the wall-time comparison: the unthrottled run got only {fast_share:.2f} "
                    "core (the 0.25-core cap itself was verified above)")
    assert slow_wall / fast_wall > 0.5 * fast_share / 0.25  # 4x ideally, 3.2x measured on a busy host


def test_a_deferred_cpu_quota_is_switched_on_by_the_worker():
    cluster = Cluster.uniform([_device("fast", 40.0), _device("slow", 10.0)], bandwidth=1e8)
    code = "from edgepool.testbed.worker import apply_cpu_quota; print(apply_cpu_quota(), apply_cpu_quota())"
    with Testbed(cluster, cpu_budget=2, cpu_quota_at_start=False) as tb:
        quota_file = tb.cgroups["slow"].quota_file
        assert quota_file.read_text().strip() == "-1"  # setup (imports, model build) runs unthrottled
        out = tb.run_in("slow", [PY, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["True", "False"]
        period = int((quota_file.parent / "cpu.cfs_period_us").read_text())
        assert period == 10_000  # a short period: the quota is a fine-grained duty cycle
        assert int(quota_file.read_text()) == 2_500  # 0.25 core of each period


SEND = textwrap.dedent("""
    import socket, sys, time
    host, nbytes = sys.argv[1], int(sys.argv[2])
    start_at = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # wall-clock time to start sending
    for _ in range(100):
        try:
            s = socket.create_connection((host, 5001)); break
        except OSError:
            time.sleep(0.05)
    time.sleep(max(0.0, start_at - time.time()))
    buf = b"x" * 65536; sent = 0
    while sent < nbytes:
        s.sendall(buf); sent += len(buf)
    s.close()
""")
RECV = textwrap.dedent("""
    import socket, time
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 5001)); srv.listen(1)
    conn, _ = srv.accept(); n = 0; t0 = None
    while True:
        b = conn.recv(1 << 16)
        if not b:
            break
        if t0 is None:
            t0 = time.time()
        n += len(b)
    t1 = time.time()
    print(n / (t1 - t0), t0, t1)
""")


def _measured_rate(tb: Testbed, src: str, dst: str, nbytes: int, tmp_path: Path) -> float:
    tb.launch({dst: [PY, "-c", RECV], src: [PY, "-c", SEND, tb.address(dst), str(nbytes)]}, log_dir=tmp_path)
    tb.wait(timeout=30)
    return float((tmp_path / f"rank0-{dst}.log").read_text().split()[0])


def test_tc_shaping_limits_bandwidth_between_namespaces(tmp_path):
    shaped = 2e6  # 16 Mbit/s
    cluster = Cluster.uniform([_device("a", 10), _device("b", 10), _device("c", 10)], bandwidth=shaped)
    cluster.graph.edges["a", "c"]["link"] = type(cluster.link("a", "c"))(bandwidth=1e12)  # unshaped in effect
    with Testbed(cluster, cpu_budget=2) as tb:
        measured = _measured_rate(tb, "a", "b", 3_000_000, tmp_path)
        fast = _measured_rate(tb, "a", "c", 30_000_000, tmp_path)
    print(f"shaped {shaped * 8 / 1e6:.1f} Mbit/s: measured {measured * 8 / 1e6:.2f} Mbit/s; "
          f"unshaped {fast * 8 / 1e6:.0f} Mbit/s")
    assert abs(measured - shaped) / shaped < 0.3
    assert fast > 10 * measured


def test_a_shared_medium_is_shared_by_concurrent_transfers(tmp_path):
    capacity = 2e6  # one 16 Mbit/s "Wi-Fi" for all four devices; every pair's own link could carry all of it
    cluster = Cluster.uniform([_device(n, 10) for n in "abcd"], bandwidth=capacity, medium="air",
                              medium_capacity=capacity)
    with Testbed(cluster, cpu_budget=2) as tb:
        start_at = str(time.time() + 2.5)  # both senders start together, once every worker is up
        tb.launch({"b": [PY, "-c", RECV], "d": [PY, "-c", RECV],
                   "a": [PY, "-c", SEND, tb.address("b"), "2000000", start_at],
                   "c": [PY, "-c", SEND, tb.address("d"), "2000000", start_at]}, log_dir=tmp_path)
        tb.wait(timeout=30)
    (rate_b, t0_b, t1_b), (rate_d, t0_d, t1_d) = (
        [float(v) for v in (tmp_path / log).read_text().split()] for log in ("rank0-b.log", "rank1-d.log"))
    total = 2 * 2_000_000 / (max(t1_b, t1_d) - min(t0_b, t0_d))
    print(f"two concurrent transfers on one {capacity * 8 / 1e6:.0f} Mbit/s medium: {rate_b * 8 / 1e6:.2f} and "
          f"{rate_d * 8 / 1e6:.2f} Mbit/s, together {total * 8 / 1e6:.2f} Mbit/s")
    assert abs(t0_b - t0_d) < 0.5, "the transfers did not overlap; the test proves nothing"
    assert abs(total - capacity) / capacity < 0.3  # without the medium they would move 2 x capacity together
    assert max(rate_b, rate_d) < 0.75 * capacity


WORKER = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    t = torch.full((250_000,), float(dist.get_rank() + 1))
    dist.all_reduce(t)
    assert torch.all(t == 3.0), t[:4]
    print("ok", os.environ["MASTER_ADDR"], os.environ["GLOO_SOCKET_IFNAME"])
    dist.destroy_process_group()
""")


def test_gloo_all_reduce_across_namespaces(tmp_path):
    cluster = Cluster.uniform([_device("a", 10), _device("b", 10)], bandwidth=5e6)
    with Testbed(cluster, cpu_budget=2) as tb:
        tb.launch({n: [PY, "-c", WORKER] for n in tb.devices}, log_dir=tmp_path)
        tb.wait(timeout=60)
        stats = subprocess.run(["tc", "-n", tb.namespace("a"), "-s", "class", "show", "dev", "veth0"],
                               capture_output=True, text=True).stdout
    assert (tmp_path / "rank1-b.log").read_text().splitlines()[-1] == "ok 10.77.0.1 veth0"
    sent = max(int(line.split()[1]) for line in stats.splitlines() if line.strip().startswith("Sent"))
    assert sent > 1_000_000  # the 1 MB tensor went through a shaped class: over the emulated link
