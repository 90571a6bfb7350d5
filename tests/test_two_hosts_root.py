"""Two real hosts, emulated as two network namespaces joined by a veth (10.99.0.1 and 10.99.0.2): the commands
`edgepool train --print-launch` prints run as printed (no GLOO_SOCKET_IFNAME), `edgepool report gather` turns
the two hosts' results into one report, and a start that cannot connect ends within the plan's timeout.

This machine maps its host name to a loopback address, as Debian and Ubuntu do (127.0.1.1): before workers
chose their interface themselves, gloo bound loopback and the printed commands failed or hung."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepool.cli import app
from edgepool.testbed import unavailable_reason
from edgepool.testbed.system import run

_reason = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(_reason is not None, reason=f"testbed unavailable: {_reason}")]

ADDRESSES = ("10.99.0.1", "10.99.0.2")
CLUSTER = """name: two-hosts
devices:
  - {name: desk, type: laptop-i7-1360p, address: 10.99.0.1}
  - {name: board, type: jetson-orin-nano, address: 10.99.0.2}
default_link: {bandwidth: 100Mbps, latency: 0.2ms}
"""


@contextlib.contextmanager
def two_hosts():
    """Two namespaces ("hosts") joined by one veth pair; everything is gone afterwards (deleting a namespace
    deletes its end of the veth, and the pair with it). Names carry a random tag: nothing else is touched."""
    tag = uuid.uuid4().hex[:6]
    hosts = [f"ep2h-{tag}-{i}" for i in range(2)]
    links = [f"ep{tag}h{i}" for i in range(2)]
    try:
        for host in hosts:
            run(["ip", "netns", "add", host])
        run(["ip", "-n", hosts[0], "link", "add", links[0], "type", "veth", "peer", "name", links[1],
             "netns", hosts[1]])
        for host, link, address in zip(hosts, links, ADDRESSES):
            run(["ip", "-n", host, "addr", "add", f"{address}/24", "dev", link])
            run(["ip", "-n", host, "link", "set", link, "up"])
            run(["ip", "-n", host, "link", "set", "lo", "up"])
        yield hosts, links
    finally:
        for host in hosts:
            run(["ip", "netns", "del", host], check=False)
        left = run(["ip", "netns", "list"], check=False).stdout
        assert tag not in left, "a namespace of the test survived"
        assert tag not in run(["ip", "-o", "link", "show"], check=False).stdout


def _printed_commands(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "two-hosts.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(app, ["train", "--cluster", str(tmp_path / "two-hosts.yaml"), "--model",
                                      "gpt2-tiny", "--planner", "gpipe", "--batch", "8", "--steps", "3",
                                      "--print-launch", "-o", str(tmp_path / "launch")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    commands = {}
    for header, command in zip(lines, lines[1:]):
        if header.startswith("# on "):
            commands[header.split()[2]] = command
    assert list(commands) == ["desk", "board"] and "GLOO_SOCKET_IFNAME" not in result.output
    return commands


def _run_on_hosts(hosts: list[str], commands: dict[str, str], tmp_path: Path, timeout_s: float,
                  env_extra: dict[str, str] | None = None) -> list[tuple[Path, int, str, float]]:
    """Start each printed command in its host's own folder (a copy of plan-run.json with `timeout_s`)."""
    spec = json.loads((tmp_path / "launch" / "plan-run.json").read_text())
    spec["timeout_s"] = timeout_s
    env = {k: v for k, v in os.environ.items() if k != "GLOO_SOCKET_IFNAME"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun
    env.update(env_extra or {})
    started, procs = time.monotonic(), []
    for host, (device, command) in zip(hosts, commands.items()):
        folder = tmp_path / device
        folder.mkdir()
        (folder / "plan-run.json").write_text(json.dumps(spec))
        procs.append((folder, subprocess.Popen(["ip", "netns", "exec", host, "sh", "-c", command], cwd=folder,
                                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, start_new_session=True)))
    out = []
    for folder, proc in procs:
        try:
            log, _ = proc.communicate(timeout=max(timeout_s * 3 - (time.monotonic() - started), 5))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            log, _ = proc.communicate()
            log += "\n(killed by the test: the command hung)"
        out.append((folder, proc.returncode, log, time.monotonic() - started))
    return out


def test_the_printed_commands_run_on_two_hosts_and_gather_into_one_report(tmp_path):
    commands = _printed_commands(tmp_path)
    with two_hosts() as (hosts, links):
        ran = _run_on_hosts(hosts, commands, tmp_path, timeout_s=60)
        for (folder, code, log, _), link in zip(ran, links):
            assert code == 0, f"{folder.name} failed:\n{log[-3000:]}"
            assert f"GLOO_SOCKET_IFNAME={link}: the interface that routes to MASTER_ADDR=10.99.0.1" in log
        stats = run(["ip", "-n", hosts[1], "-s", "-j", "link", "show", "dev", links[1]]).stdout
    crossed = json.loads(stats)[0]["stats64"]["rx"]["bytes"]

    folders = [str(folder / "edgepool-run") for folder, *_ in ran]
    out = tmp_path / "gathered"
    result = CliRunner().invoke(app, ["report", "gather", *folders, "-o", str(out), "--cluster",
                                      str(tmp_path / "two-hosts.yaml")])
    assert result.exit_code == 0, result.output
    assert "samples/s" in result.output
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert (out / "gantt.png").stat().st_size > 0
    assert report["source"] == "measured" and report["throughput"] > 0
    assert set(report["per_device"]) == {"desk", "board"} and plan["planner"] == "gpipe"
    assert report["metrics"]["launcher"]["launcher"] == "torchrun"
    assert len(report["metrics"]["loss_per_step"]) == 3 and report["metrics"]["loss_per_step"][0] > 0
    sent = report["metrics"]["p2p_bytes_per_iteration"] * 3
    assert sent > 100_000 and crossed > sent, "the activations did not cross the veth"
    assert {e["device"] for e in report["timeline"]} == {"desk", "board"}


def test_a_start_that_cannot_connect_ends_within_the_timeout_on_every_host(tmp_path):
    """GLOO_SOCKET_IFNAME=lo (the user's override, honoured) makes gloo bind loopback, as the host name did:
    one host fails at once, the other used to wait past its timeout (300 s for 120 s); now both exit non-zero
    within it, each leaving error-rank<N>.txt."""
    commands = _printed_commands(tmp_path)
    timeout = 15.0
    with two_hosts() as (hosts, _):
        ran = _run_on_hosts(hosts, commands, tmp_path, timeout_s=timeout, env_extra={"GLOO_SOCKET_IFNAME": "lo"})
    for rank, (folder, code, log, elapsed) in enumerate(ran):
        assert code != 0, log[-2000:]
        assert "GLOO_SOCKET_IFNAME=lo (set by the user or the launcher)" in log
        assert elapsed < timeout + 45, f"{folder.name} took {elapsed:.0f} s:\n{log[-2000:]}"  # start-up + timeout
        assert (folder / "edgepool-run" / f"error-rank{rank}.txt").exists(), log[-2000:]
    gathered = CliRunner().invoke(app, ["report", "gather", *(str(f / "edgepool-run") for f, *_ in ran),
                                        "-o", str(tmp_path / "gathered")])
    assert gathered.exit_code == 2
    assert "error: results = ['rank 0 (desk)', 'rank 1 (board)'] is not valid" in gathered.output
    assert "error-rank1.txt" in gathered.output
