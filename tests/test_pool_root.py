"""A pool formed for real: three "hosts" (network namespaces on this machine, as the testbed builds them) run
`edgepool agent`, a coordinator (`edgepool pool up`) in the hub namespace admits them by mDNS discovery and by
`--join`, refuses a fourth with a wrong key, measures their links; `edgepool train --pool` runs across them and
recovers, losing no sample, when one agent is killed mid-run; the dashboard shows it in a real headless
browser (the screenshot is kept in test-artifacts/). Needs root and iproute2 (CI has them)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edgepool.pool.client import PoolClient
from edgepool.pool.key import create_key
from edgepool.testbed.netns import Network, entered, list_namespaces
from edgepool.testbed.system import unavailable_reason

_reason = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(_reason is not None, reason=f"namespaces unavailable: {_reason}")]

EDGEPOOL = str(Path(sys.executable).with_name("edgepool"))
PORT, DASHBOARD_PORT = 29650, 8650


class Pool:
    """The namespaces, the processes started in them and their logs; everything is removed at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.network = Network(f"pool{uuid.uuid4().hex[:6]}", ["h1", "h2", "h3", "h4"])
        self.processes: dict[str, subprocess.Popen] = {}
        self.key_file = tmp / "pool.key"
        self.key, _, _ = create_key(self.key_file)
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config"), "PYTHONUNBUFFERED": "1"}

    @property
    def coordinator(self) -> str:
        return f"{self.network.hub_address}:{PORT}"

    def start(self, name: str, namespace: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        process = subprocess.Popen(["ip", "netns", "exec", namespace, EDGEPOOL, *args], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def agent(self, host: str, *args: str) -> subprocess.Popen:
        return self.start(f"agent-{host}", self.network.devices[host].namespace, "agent", "--name", host, *args)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def client(self) -> PoolClient:
        with entered(self.network.hub):  # the client's socket lives in the hub namespace
            return PoolClient(self.coordinator, self.key)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        assert self.network.destroy() == []


def _wait(what: str, predicate, timeout_s: float, pool: Pool, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    logs = "\n".join(f"--- {name}\n{pool.log(name)[-1500:]}" for name in pool.processes)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")


@pytest.fixture
def pool(tmp_path):
    p = Pool(tmp_path)
    p.network.create()
    try:
        yield p
    finally:
        p.close()
        assert not list_namespaces(f"edgepool-{p.network.run_id}")


def test_pool_forms_itself_trains_and_survives_an_agent(pool):
    pool.start("coordinator", pool.network.hub, "pool", "up", "--name", "testpool", "--port", str(PORT),
               "--dashboard-port", str(DASHBOARD_PORT), "--key-file", str(pool.key_file), "--probe-seconds", "0.3",
               "--heartbeat-timeout", "3")
    key_file = ("--key-file", str(pool.key_file))
    pool.agent("h1", "--pool-name", "testpool", *key_file)  # found by mDNS
    pool.agent("h2", "--pool-name", "testpool", *key_file)
    pool.agent("h3", "--join", pool.coordinator, *key_file)  # where multicast does not reach
    intruder = pool.agent("h4", "--join", pool.coordinator, "--key", secrets.token_hex(32))

    client = _wait("the coordinator", lambda: _try(pool.client), 60, pool)
    assert intruder.wait(timeout=90) == 2
    assert "wrong pool key" in pool.log("agent-h4")

    def ready():
        state = client.state()
        up = sorted(d["name"] for d in state["devices"] if d["state"] == "up")
        return state if up == ["h1", "h2", "h3"] and len(state["links"]) == 6 else None

    state = _wait("three agents up and their six link directions measured", ready, 120, pool)
    assert any(e["kind"] == "refused" and e["device"] == "h4" for e in state["events"])
    assert all(link["bandwidth_mbit_s"] > 10 and link["rtt_ms"] > 0 for link in state["links"])
    cluster = client.cluster()
    assert sorted(cluster.devices) == ["h1", "h2", "h3"] and cluster.addresses["h3"] == "10.77.0.3"

    run_dir = pool.tmp / "run"
    trainer = pool.start("train", pool.network.hub, "train", "--pool", pool.coordinator, *key_file,
                         "--model", "gpt2-tiny", "--planner", "gpipe", "--steps", "40", "--batch", "8", "--json",
                         "-o", str(run_dir))
    job = _wait("the training job to be half-way", lambda: _job_at(client, 8), 240, pool, poll_s=0.1)
    assert job["plan"]["devices"] and job["timeline"]
    victim = next(d for d in job["plan"]["devices"][1:])  # not the first stage: that is where data enters
    os.killpg(pool.processes[f"agent-{victim}"].pid, signal.SIGKILL)

    _wait("the dashboard's pool to see the device gone", lambda: _gone(client, victim), 30, pool)
    _screenshot(pool, victim)
    assert trainer.wait(timeout=300) == 0, pool.log("train")
    result = json.loads(pool.log("train").strip().splitlines()[-1])
    assert result["samples"]["samples_lost"] == 0 and result["samples"]["samples_double_counted"] == 0
    assert result["samples"]["used"] == 40 * 8
    assert victim in result["plans"][0] and victim not in result["plans"][-1], result["plans"]
    assert result["recoveries"] and result["recoveries"][0]["device"] == victim

    pool.agent(victim, "--join", pool.coordinator, *key_file)  # it comes back
    state = _wait(f"{victim} to rejoin", lambda: _rejoined(client, victim), 90, pool)
    kinds = [e["kind"] for e in state["events"]]
    assert {"join", "refused", "leave", "failure", "replan", "rejoin"} <= set(kinds), kinds
    assert state["job"]["state"] == "done"
    client.close()


def _try(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - not up yet
        return None


def _job_at(client: PoolClient, done: int) -> dict | None:
    job = client.state()["job"]
    return job if job and job["state"] == "running" and job["progress"]["done"] >= done else None


def _gone(client: PoolClient, device: str) -> bool:
    return any(d["name"] == device and d["state"] == "gone" for d in client.state()["devices"])


def _rejoined(client: PoolClient, device: str) -> dict | None:
    state = client.state()
    return state if any(d["name"] == device and d["state"] == "up" for d in state["devices"]) else None


def _screenshot(pool: Pool, victim: str) -> None:
    """The dashboard in headless chromium (started inside the hub namespace, where the page is served)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from browser import headless_chrome, needs_chrome, save_screenshot, wait_for

    needs_chrome()
    with entered(pool.network.hub), headless_chrome() as driver:
        driver.get(f"http://{pool.network.hub_address}:{DASHBOARD_PORT}/")
        rows = lambda d: d.execute_script(  # noqa: E731
            "return [...document.querySelectorAll('#devices [data-device]')].map(r => [r.dataset.device, "
            "r.dataset.state]).concat([['job', document.querySelector('#job').dataset.state]])")
        seen = wait_for(driver, lambda d: dict(rows(d)).get(victim) == "gone" and dict(rows(d)).get("job") in
                        ("running", "recovering", "done") and dict(rows(d)), timeout=30, what="devices and the job")
        assert sorted(k for k in seen if k != "job") == ["h1", "h2", "h3"]
        path = save_screenshot(driver, "pool-train-recovery.png")
        assert path.stat().st_size > 5000
