"""Run a `RunSpec` on Flower's deployment runtime, one real process group per device.

On the testbed (root) every device is a network namespace with a cgroup (CPU quota from its speed, memory
limit from its memory) and `tc`-shaped links: the SuperLink (and the ServerApp it starts) runs on the
cluster's server device, one SuperNode (and its SuperExec, see `superexec`) on each client device, all
talking HTTP over the shaped links. Without root the same processes run unconfined on loopback (the local
launcher), and the report says so. `KillPlan` SIGKILLs one device's processes in the middle of a round.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from edgepool.cluster import Cluster
from edgepool.errors import SpecError
from edgepool.federated.spec import RunSpec
from edgepool.testbed.launcher import log_tail

SUPERLINK_PORT = 9092
RUNTIME_PORT = 9094  # each SuperNode's runtime API, inside its own namespace
EXECUTORS = ("fork", "subprocess")


class FederatedRunError(RuntimeError):
    """The run did not finish: a process died or it ran out of time; the message carries its log's tail."""


@dataclass
class KillPlan:
    device: str
    round: int
    after_s: float = 3.0  # after the round's messages went out


def _bin(name: str) -> str:
    """Flower's console scripts beside this interpreter (the SuperLink starts `flower-superexec` by name too,
    so the same folder goes first on every process's PATH)."""
    return str(Path(sys.executable).parent / name)


def _wait_listening(launcher, host: str, port: int, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with launcher.coordinator_namespace():
            try:
                socket.create_connection((host, port), timeout=1.0).close()
                return
            except OSError:
                pass
        time.sleep(0.5)
    raise FederatedRunError(f"the SuperLink did not listen on {host}:{port} within {timeout_s:.0f} s")


def run_on_flower(spec: RunSpec, cluster: Cluster, server: str, work_dir: str | Path, *, launcher: str = "testbed",
                  executor: str = "fork", kill: KillPlan | None = None,
                  on_event: Callable[[dict], None] | None = None, timeout_s: float = 3600.0,
                  **testbed_options) -> dict:
    """Start the SuperLink on `server` and a SuperNode on every device of `spec`, submit the run with
    `flwr run`, follow its rounds (`on_event` gets each progress event) and return the ServerApp's report."""
    from edgepool.testbed.launcher import free_port, make_launcher

    if executor not in EXECUTORS:
        raise SpecError(field="executor", value=executor, accepted=", ".join(EXECUTORS))
    clients = [n.device for n in spec.nodes]
    for name in [server, *clients]:
        if name not in cluster.devices:
            raise SpecError(field="device", value=name, accepted=", ".join(cluster.devices))
    if server in clients:
        raise SpecError(field="server", value=server, accepted="a device that is not also a client")
    if kill is not None and kill.device not in clients:
        raise SpecError(field="kill.device", value=kill.device, accepted=", ".join(clients))

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec_path, report_path = work / "spec.json", work / "report.json"
    progress_path = Path(f"{report_path}.progress")
    for stale in (report_path, progress_path):
        stale.unlink(missing_ok=True)
    spec.save(spec_path)
    app_dir = work / "flower-app"
    shutil.rmtree(app_dir, ignore_errors=True)
    shutil.copytree(resources.files("edgepool.federated") / "flower_app", app_dir)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    # start-up (imports, the model) runs unthrottled; each device's warm SuperExec switches its quota on
    testbed_options.setdefault("cpu_quota_at_start", executor == "subprocess")
    pool = make_launcher(launcher, cluster, devices=[server, *clients], **testbed_options)
    text = spec.task.startswith("tweets")
    with pool:
        local = pool.kind == "local"
        link_port = free_port() if local else SUPERLINK_PORT
        link_host = pool.address(server)
        base_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "EDGEPOOL_FEDERATED_SPEC": str(spec_path)}

        def env_of(device: str) -> dict:
            home = work / "flwr-home" / device
            home.mkdir(parents=True, exist_ok=True)
            return {**base_env, "FLWR_HOME": str(home)}

        pool.spawn(server, [_bin("flower-superlink"), "--insecure", "--host", link_host, "--port", str(link_port)],
                   env_of(server), logs / f"superlink-{server}.log")
        _wait_listening(pool, link_host, link_port)
        if hasattr(pool, "cgroups") and not pool.cpu_quota_at_start:  # the SuperLink is Flower's: set its quota
            pool.cgroups[server].quota_file.write_text(str(pool.cgroups[server].quota_us))
        for device in clients:
            runtime_port = free_port() if local else RUNTIME_PORT
            isolation = ["--isolation", "process"] if executor == "fork" else []
            pool.spawn(device, [_bin("flower-supernode"), "--insecure", *isolation, "--superlink",
                                f"{link_host}:{link_port}", "--host", "127.0.0.1", "--port", str(runtime_port),
                                "--node-config", f"device='{device}'"], env_of(device), logs / f"supernode-{device}.log")
            if executor == "fork":
                pool.spawn(device, [sys.executable, "-m", "edgepool.federated.superexec", "--runtime-api-address",
                                    f"127.0.0.1:{runtime_port}", "--preload", "text" if text else "image"],
                           env_of(device), logs / f"superexec-{device}.log")

        home = Path(env_of(server)["FLWR_HOME"])
        (home / "config.toml").write_text(f'[superlink]\ndefault = "edgepool"\n\n[superlink.edgepool]\n'
                                          f'address = "{link_host}:{link_port}"\ninsecure = true\n')
        submit = [_bin("flwr"), "run", str(app_dir), "edgepool", "--run-config",
                  f"spec='{spec_path}' report='{report_path}'"]
        run = pool.run_in if hasattr(pool, "run_in") else (lambda _d, argv, **kw: subprocess.run(argv, **kw))
        done = run(server, submit, env={**os.environ, **env_of(server)}, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise FederatedRunError(f"flwr run failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")

        killed = _follow(pool, progress_path, report_path, kill, on_event, timeout_s, logs)
        report = json.loads(report_path.read_text())
    report["where"] = pool.describe()
    report["executor"] = executor
    report["killed"] = killed
    return report


def _follow(pool, progress_path: Path, report_path: Path, kill: KillPlan | None,
            on_event: Callable[[dict], None] | None, timeout_s: float, logs: Path) -> dict | None:
    """Read the ServerApp's progress events until its report appears; carry out the kill plan."""
    deadline, seen, kill_at, killed = time.time() + timeout_s, 0, None, None
    superlink = pool.handles[0]
    while True:
        finished = report_path.exists()  # checked first: the events written before it are read below
        text = progress_path.read_text() if progress_path.exists() else ""
        lines = text.split("\n")[:-1]  # whole lines only: the ServerApp may be writing the last one
        for line in lines[seen:]:
            event = json.loads(line)
            if on_event:
                on_event(event)
            if kill and event["event"] == "round-started" and event["round"] == kill.round:
                kill_at = time.time() + kill.after_s
        seen = len(lines)
        if finished:
            return killed
        if kill_at is not None and killed is None and time.time() >= kill_at:
            _kill_device(pool, kill.device)
            killed = {"device": kill.device, "round": kill.round, "at": time.time()}
        if time.time() > deadline:
            raise FederatedRunError(f"no report after {timeout_s:.0f} s; SuperLink log:\n"
                                    f"{log_tail(logs / f'superlink-{superlink.device}.log', 20)}")
        if superlink.poll() is not None:
            raise FederatedRunError(f"the SuperLink exited ({superlink.poll()}):\n"
                                    f"{log_tail(logs / f'superlink-{superlink.device}.log', 20)}")
        time.sleep(0.5)


def _kill_device(pool, device: str) -> None:
    """SIGKILL everything the device runs (its SuperNode, SuperExec and any ClientApp), as a crash would."""
    if hasattr(pool, "cgroups"):
        pool.cgroups[device].kill_all()
        return
    for handle in pool.handles:
        if handle.device == device:
            pool.kill(handle)
