"""The pool without root: the key file and the handshake, and an in-process pool on loopback (coordinator and
agents as threads, real worker processes) for membership, link probes, the live cluster and `PoolLauncher`."""
from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
import time

import pytest

from edgepool.cluster import load_cluster
from edgepool.errors import SpecError
from edgepool.pool import key as pool_key
from edgepool.pool.channel import Channel, Refused, accept, connect
from edgepool.pool.job import JobReporter
from edgepool.runtime.harness import WorkerJob, run_workers
from edgepool.testbed.launcher import WorkerFailed

from pool_local import local_pool


# ---------------------------------------------------------------------------------------------- the key
def test_the_key_is_created_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "cfg" / "pool.key"
    key, where, created = pool_key.create_key(path)
    assert created and where == path and len(key) == pool_key.KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _, created_again = pool_key.create_key(path)
    assert again == key and not created_again
    path.chmod(0o644)
    with pytest.raises(SpecError, match=r"--key-file .*chmod 600"):
        pool_key.load_key_file(path)


def test_a_key_comes_from_the_flag_then_the_environment_then_the_file(tmp_path, monkeypatch):
    a, b = os.urandom(32), os.urandom(32)
    monkeypatch.setenv(pool_key.KEY_ENV, b.hex())
    assert pool_key.resolve_key(a.hex()) == a
    assert pool_key.resolve_key() == b
    monkeypatch.delenv(pool_key.KEY_ENV)
    with pytest.raises(SpecError, match="--key-file"):
        pool_key.resolve_key(key_file=tmp_path / "missing.key")
    with pytest.raises(SpecError, match="64 hex digits") as bad:
        pool_key.parse_key("deadbeef" * 7 + "zz")
    assert "deadbeef" * 7 not in str(bad.value)  # the error does not repeat a secret


# ---------------------------------------------------------------------------------------------- handshake
def _acceptor(key: bytes, refused: list):
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        sock, _ = server.accept()
        accepted.append(accept(sock, key, on_refused=lambda hello, why: refused.append((hello.name, why))))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread, accepted


def test_the_right_key_is_welcomed_and_a_wrong_one_refused_on_both_sides():
    key = os.urandom(32)
    refused: list = []
    server, thread, accepted = _acceptor(key, refused)
    channel, welcome = connect("127.0.0.1", server.getsockname()[1], key, "client", "me")
    thread.join(5)
    assert accepted[0][1].name == "me" and accepted[0][1].role == "client"
    accepted[0][0].send({"type": "ping"})
    assert channel.recv(5) == {"type": "ping"}

    server2, thread2, accepted2 = _acceptor(key, refused)
    with pytest.raises(Refused, match="wrong pool key"):
        connect("127.0.0.1", server2.getsockname()[1], os.urandom(32), "agent", "intruder")
    thread2.join(5)
    assert accepted2 == [None] and refused[0][0] == "intruder"


def test_an_agent_does_not_join_a_coordinator_that_cannot_prove_the_key():
    server = socket.create_server(("127.0.0.1", 0))

    def impostor():
        channel = Channel(server.accept()[0])
        channel.send({"type": "challenge", "nonce": "00" * 16})
        channel.recv(5)
        channel.send({"type": "welcome", "proof": "f" * 64})

    threading.Thread(target=impostor, daemon=True).start()
    with pytest.raises(Refused, match="could not prove"):
        connect("127.0.0.1", server.getsockname()[1], os.urandom(32), "agent", "careful")


# ---------------------------------------------------------------------------------------------- a local pool
@pytest.fixture(scope="module")
def pool():
    with local_pool(("a", "b", "c")) as p:
        yield p


def test_the_live_cluster_has_the_measured_devices_links_and_addresses(pool, tmp_path):
    with pool.client() as client:
        cluster = client.cluster()
        spec, agents = client.cluster_spec()
    assert sorted(cluster.devices) == ["a", "b", "c"]
    assert cluster.devices["b"].peak_flops["fp32"] == 10e9
    assert cluster.addresses == {"a": "127.0.0.1", "b": "127.0.0.1", "c": "127.0.0.1"}
    assert len(spec["links"]) == 3 and "default_link" not in spec  # every pair measured, nothing assumed
    measured = [pool.coordinator.links[(x, y)]["bandwidth_bytes_per_s"] for x, y in (("a", "b"), ("b", "a"))]
    assert cluster.link("a", "b").bandwidth == pytest.approx(min(measured), rel=1e-3)
    assert set(agents) == {"a", "b", "c"} and all(a["port"] > 0 for a in agents.values())
    import yaml
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(spec))
    exported = load_cluster(tmp_path / "pool.yaml")  # `pool export` writes a spec that loads as a cluster
    assert exported.devices == cluster.devices and exported.link("c", "a") == cluster.link("c", "a")


def test_workers_run_on_the_agents_and_their_files_come_back(pool, tmp_path):
    job = WorkerJob.create({"out_dir": str(tmp_path), "sleep_s": 0.0}, tmp_path)
    with pool.launcher() as launcher:
        results = run_workers(launcher, "pool_toy", job, ["c", "a"], timeout_s=60, result_name="rank{rank}.json")
    assert [(r["rank"], r["device"]) for r in results] == [(0, "c"), (1, "a")]
    assert not results[0]["job_file"].startswith(str(tmp_path))  # it ran in the agent's own folder ...
    assert (tmp_path / "progress-c").read_text() == "started"  # ... and what it wrote came back here
    assert "c started as rank 0" in (tmp_path / "logs" / "rank0-c.log").read_text()
    assert results[0]["master"].startswith("127.0.0.1:")
    assert launcher.describe()["launcher"] == "pool"


def test_a_failing_worker_names_its_device_and_cause(pool, tmp_path):
    job = WorkerJob.create({"out_dir": str(tmp_path), "fail": ["b"], "sleep_s": 5.0}, tmp_path)
    with pool.launcher() as launcher, pytest.raises(WorkerFailed, match=r"device 'b'.*injected failure on b"):
        run_workers(launcher, "pool_toy", job, ["a", "b"], timeout_s=60)


def test_an_agent_starts_only_the_workers_its_owner_allows(pool, tmp_path):
    job = WorkerJob.create({"out_dir": str(tmp_path)}, tmp_path)
    with pool.launcher() as launcher, pytest.raises(WorkerFailed, match="runs only edgepool's workers"):
        run_workers(launcher, "os", job, ["a"], timeout_s=30)


def test_a_second_device_of_the_same_name_is_refused(pool):
    with pytest.raises(Refused, match="already in the pool"):
        info = {"device": json.loads(pool.agents["a"].device.model_dump_json()), "agent_port": 1}
        connect("127.0.0.1", pool.coordinator.port, pool.key, "agent", "a", info)


def test_a_lost_agent_kills_its_workers_goes_and_comes_back(tmp_path):
    from pool_local import device
    from edgepool.pool.agent import Agent

    with local_pool(("x", "y")) as p, p.launcher() as launcher:
        job = WorkerJob.create({"out_dir": str(tmp_path), "sleep_s": 60.0}, tmp_path)
        handle = launcher.spawn("y", ["python", "-m", "pool_toy", str(job.path)], {"RANK": "0", "MASTER_ADDR": "-",
                                                                                  "MASTER_PORT": "0"})
        while not (tmp_path / "progress-y").exists():
            assert handle.poll() is None, handle.process.reason
            time.sleep(0.05)
        p.agents["y"].close()  # the device leaves
        assert handle.process.wait(timeout=10) < 0 and "lost" in handle.process.reason
        deadline = time.monotonic() + 10
        while "y" in p.coordinator.up() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.coordinator.members["y"].state == "gone"
        back = Agent(p.agents["y"].config, device=device("y"))
        back.config.port = 0
        threading.Thread(target=back.run, daemon=True).start()
        while "y" not in p.coordinator.up() and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        kinds = [(e["kind"], e["device"]) for e in p.coordinator.state()["events"]]
        back.close()
    assert ("leave", "y") in kinds and ("rejoin", "y") in kinds


# ---------------------------------------------------------------------------------------------- job reports
class _Recorder:
    def __init__(self):
        self.jobs, self.events = [], []

    def report_job(self, job, update=False):
        self.jobs.append((job, update))

    def report_event(self, kind, device, text):
        self.events.append((kind, device, text))


def test_the_job_reporter_sends_progress_at_most_twice_a_second_with_measured_throughput():
    clock = [1000.0]
    client = _Recorder()
    reporter = JobReporter(client, "training", "edgepool train", total=10, work_per_unit=8, clock=lambda: clock[0])
    for done in range(1, 6):
        clock[0] += 0.2
        reporter.progress(done)
    sent = [j for j, update in client.jobs if update]
    assert len(sent) == 2  # t=0.2 (first) and t=0.8; the others were within 0.5 s of the last send
    reporter.finish("done")
    last = client.jobs[-1][0]
    assert last["state"] == "done" and last["progress"]["done"] == 5
    assert last["throughput"]["value"] == pytest.approx(4 * 8 / 0.8)  # 4 iterations of 8 samples in 0.8 s


def test_a_job_that_names_code_of_its_own_is_refused(pool, tmp_path):
    job = WorkerJob.create({"out_dir": str(tmp_path), "model": {"factory": "os:system", "kwargs": {}}}, tmp_path)
    with pool.launcher() as launcher, pytest.raises(WorkerFailed, match=r"names code of its own \(os:system\)"):
        run_workers(launcher, "pool_toy", job, ["a"], timeout_s=30)


# ---------------------------------------------------------------------------------------------- the commands
def _cli(*args, env=None):
    from typer.testing import CliRunner
    from edgepool.cli import app

    return CliRunner(env=env).invoke(app, list(args))


def test_pool_show_export_and_key_on_the_command_line(pool, tmp_path):
    key = ("--key", pool.key.hex())
    shown = _cli("pool", "show", "--pool", pool.address, *key)
    assert shown.exit_code == 0, shown.output
    assert all(name in shown.output for name in ("a", "b", "c")) and "Mbit/s" in shown.output
    state = json.loads(_cli("pool", "show", "--pool", pool.address, *key, "--json").output)
    assert {d["name"] for d in state["devices"]} == {"a", "b", "c"}
    exported = _cli("pool", "export", str(tmp_path / "live.yaml"), "--pool", pool.address, *key)
    assert exported.exit_code == 0, exported.output
    assert sorted(load_cluster(tmp_path / "live.yaml").devices) == ["a", "b", "c"]
    printed = _cli("pool", "key", "--key-file", str(tmp_path / "k" / "pool.key"))
    assert printed.exit_code == 0
    assert pool_key.load_key_file(tmp_path / "k" / "pool.key").hex() == printed.output.strip()


@pytest.mark.parametrize("args, field", [
    (("pool", "show", "--pool", "127.0.0.1:1", "--key", "ab" * 32), "--pool"),  # nothing listens there
    (("pool", "show", "--pool", "host:notaport", "--key", "ab" * 32), "--pool"),
    (("agent", "--key", "not-hex"), "--key"),
    (("agent", "--key", "ab" * 32, "--join", "host:99999"), "--join"),
])
def test_bad_pool_input_is_one_line_naming_the_field(args, field):
    result = _cli(*args, env={"EDGEPOOL_POOL_KEY": ""})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.output, result.output


def test_pool_show_with_the_wrong_key_is_refused_in_one_line(pool):
    result = _cli("pool", "show", "--pool", pool.address, "--key", os.urandom(32).hex())
    assert result.exit_code == 2 and "wrong pool key" in result.output and "Traceback" not in result.output


def test_the_accelerator_is_reported_as_torch_sees_it(monkeypatch):
    import torch
    from edgepool import local_device

    class Props:
        name, total_memory = "Orin (nvgpu)", 32 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    found = local_device.detect_accelerator()
    assert found["kind"] == "cuda" and found["name"] == "Orin (nvgpu)" and found["memory_bytes"] == 32 * 2**30
    monkeypatch.setattr(local_device, "_read_text", lambda path: "NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML here
    monkeypatch.setitem(sys.modules, "jtop", None)  # nor jetson-stats
    assert local_device.detect_accelerator()["board"] == "NVIDIA Jetson AGX Orin Developer Kit"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(local_device, "_read_text", lambda path: "")
    assert local_device.detect_accelerator() is None  # a plain CPU host
