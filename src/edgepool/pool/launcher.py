"""`PoolLauncher`: the `Launcher` whose workers run on the pool's devices, started by their agents.

Every runtime takes it where it takes the local or testbed launcher: `launch` starts a group with the
`torchrun` environment (the rendezvous on the first device, at a port its agent picked), `spawn` starts one
worker (elastic training), `wait`/`stop_workers`/`kill` behave as for local processes. A worker is
`python -m MODULE JOB.json` as everywhere; the job file's content travels to the agent (which may only start
edgepool's workers) and what the worker writes into the job's folder comes back into the same folder here, so a
runtime reads results, progress and logs as it does from local workers. A device whose agent disappears counts
as a worker killed by SIGKILL, which is what the runtimes' recovery expects of a device that leaves.
"""
from __future__ import annotations

import base64
import itertools
import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Mapping, Sequence

from edgepool.pool.channel import Channel, ChannelClosed, connect
from edgepool.testbed.launcher import ProcessLauncher, WorkerHandle

AGENT_LOST = -signal.SIGKILL


class RemoteProcess:
    """A worker on an agent's device: the part of `subprocess.Popen` the launchers use."""

    def __init__(self, connection: "AgentConnection", wid: str, args: list[str]):
        self.connection, self.id, self.args = connection, wid, args
        self.pid: int | None = None
        self.returncode: int | None = None
        self.reason = ""
        self.log_in_folder: Path | None = None  # where the agent's copy of its log lands here
        self.log_copy: Path | None = None  # the log path the runtime asked for, when outside the job folder
        self._done = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self.connection.signal(self.id, signum)

    def finished(self, returncode: int, reason: str = "") -> None:
        if self.returncode is None:
            self.returncode, self.reason = returncode, reason
            self._done.set()


class AgentConnection:
    """This command's session with one agent: the workers it started there and the folders they write to."""

    def __init__(self, device: str, host: str, port: int, key: bytes, name: str):
        self.device = device
        self.channel: Channel = connect(host, port, key, "client", name)[0]
        self.processes: dict[str, RemoteProcess] = {}
        self.folders: set[str] = set()
        self.replies: dict[str, tuple[threading.Event, list]] = {}
        self.lost = ""
        self._ids = itertools.count()
        threading.Thread(target=self._read, daemon=True, name=f"pool-agent-{device}").start()

    def spawn(self, module: str, job_path: Path, env: Mapping[str, str], log_path: Path | None) -> RemoteProcess:
        folder = job_path.parent.resolve()
        log = (log_path.resolve().relative_to(folder) if log_path is not None and
               log_path.resolve().is_relative_to(folder) else Path(".pool-logs") / f"{self.device}.log")
        wid = f"w{next(self._ids)}"
        process = RemoteProcess(self, wid, [module, str(job_path)])
        process.log_copy = log_path if log_path is not None and folder / log != log_path.resolve() else None
        process.log_in_folder = folder / log
        self.processes[wid] = process
        self.folders.add(str(folder))
        if self.lost:
            process.finished(AGENT_LOST, self.lost)
            return process
        try:
            self.channel.send({"type": "spawn", "id": wid, "module": module, "folder": str(folder),
                               "job_name": job_path.name, "payload": json.loads(job_path.read_text()),
                               "env": dict(env), "log": str(log)})
        except ChannelClosed as exc:
            self._lose(str(exc))
        return process

    def signal(self, wid: str, signum: int) -> None:
        try:
            self.channel.send({"type": "signal", "id": wid, "signal": int(signum)})
        except ChannelClosed as exc:
            self._lose(str(exc))

    def free_port(self, timeout_s: float = 10.0) -> int:
        rid = f"p{next(self._ids)}"
        done, box = threading.Event(), []
        self.replies[rid] = (done, box)
        self.channel.send({"type": "free_port", "id": rid})
        if not done.wait(timeout_s):
            raise TimeoutError(f"the agent of {self.device} did not answer within {timeout_s} s")
        return int(box[0]["port"])

    def _read(self) -> None:
        try:
            while True:
                message = self.channel.recv()
                kind = message["type"]
                if kind == "files":
                    self._write(message["folder"], message["files"])
                elif kind == "started" and message["id"] in self.processes:
                    self.processes[message["id"]].pid = message.get("pid")
                elif kind == "exited" and message["id"] in self.processes:
                    process = self.processes[message["id"]]
                    if process.log_copy is not None and process.log_in_folder.exists():
                        process.log_copy.parent.mkdir(parents=True, exist_ok=True)
                        process.log_copy.write_bytes(process.log_in_folder.read_bytes())
                    process.finished(int(message["returncode"]), message.get("reason", ""))
                elif message.get("id") in self.replies:
                    done, box = self.replies.pop(message["id"])
                    box.append(message)
                    done.set()
        except ChannelClosed as exc:
            self._lose(f"the agent of {self.device} was lost ({exc})")

    def _write(self, folder: str, files: dict[str, str]) -> None:
        """Files a worker wrote, into the job folder they belong to (only folders this command sent)."""
        if folder not in self.folders:
            return
        root = Path(folder)
        for relative, data in files.items():
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".pool.tmp")
            tmp.write_bytes(base64.b64decode(data))
            tmp.replace(target)

    def _lose(self, why: str) -> None:
        self.lost = self.lost or why
        for process in self.processes.values():
            process.finished(AGENT_LOST, self.lost)

    def close(self) -> None:
        self.channel.close()


class PoolLauncher(ProcessLauncher):
    """Workers on the pool's devices through their agents (see the module docstring)."""

    kind = "pool"

    def __init__(self, agents: dict[str, dict], key: bytes, coordinator: str = "", name: str = "edgepool"):
        super().__init__()
        self.agents, self.key, self.coordinator, self.name = agents, key, coordinator, name
        self.connections: dict[str, AgentConnection] = {}
        self._rendezvous_device: str | None = None

    def connection(self, device: str) -> AgentConnection:
        if device not in self.connections:
            if device not in self.agents:
                raise ValueError(f"device {device!r} has no agent in the pool (up: {', '.join(self.agents)})")
            a = self.agents[device]
            self.connections[device] = AgentConnection(device, a["address"], int(a["port"]), self.key, self.name)
        return self.connections[device]

    def address(self, device: str) -> str:
        return self.agents[device]["address"]

    def ifname(self, device: str) -> str:
        return ""  # the agent sets GLOO_SOCKET_IFNAME to the interface it reaches the pool on

    def launch(self, commands, env=None, log_dir=None) -> list[WorkerHandle]:
        self._rendezvous_device = next(iter(commands), None)
        return super().launch(commands, env, log_dir)

    def _master_port(self) -> int:
        return self.connection(self._rendezvous_device).free_port()

    def spawn(self, device: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              log_path: str | Path | None = None, rank: int = -1) -> WorkerHandle:
        argv = [str(a) for a in argv]
        if len(argv) != 4 or argv[1] != "-m":
            raise ValueError(f"a pool worker is `python -m MODULE JOB.json`; got {argv}")
        worker_env = {"OMP_NUM_THREADS": "1", **(env or {})}
        process = self.connection(device).spawn(argv[2], Path(argv[3]), worker_env,
                                                Path(log_path) if log_path is not None else None)
        handle = WorkerHandle(device, rank, self.address(device), process, worker_env,
                              Path(log_path) if log_path is not None else process.log_in_folder)
        self.handles.append(handle)
        return handle

    def coordinator_address(self) -> str:
        """This machine's address as the agents see it (a store this process hosts is reached there)."""
        device = next(iter(self.connections), None) or next(iter(self.agents))
        return self.connection(device).channel.local_address

    def _failure_reason(self, handle: WorkerHandle) -> str:
        return getattr(handle.process, "reason", "")

    def send_signal(self, handle: WorkerHandle, signum: int) -> None:
        handle.process.send_signal(signum)  # the agent signals the worker's process group on its device

    def describe(self) -> dict:
        return {"launcher": "pool", "coordinator": self.coordinator,
                "network": "the real links between the agents' hosts (as the coordinator's probe measured them)",
                "cpu": "each agent's whole device", "memory": "each agent's whole device",
                "devices": {d: {"address": a["address"]} for d, a in self.agents.items()}}

    def _release(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections = {}
