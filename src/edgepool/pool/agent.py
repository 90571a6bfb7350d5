"""`edgepool agent`: the one process each device runs to be part of a pool.

It measures its device on the spot (`local_device`: compute, memory, memory bandwidth, and an accelerator where
torch or the vendor's tools see one), finds the coordinator (mDNS, or `--join HOST:PORT`), proves the pool key,
registers and sends a heartbeat every second; when the coordinator goes away it keeps trying to rejoin. On its
own port it answers link probes from other agents and the job sessions of commands (`PoolLauncher`).

A job session may only start edgepool's own worker entry points (`WORKER_MODULES`) with a JSON job file: the
agent never runs code it is sent, and a job that names code to import (a model factory, iteration hooks) is
refused unless the device's owner allowed that module (`--allow-module`). The job's folder on the command's
machine is mapped to a folder of the agent (paths in the job that point into it are rewritten), and what the
workers write there (results, progress, logs, saved state) is sent back as it changes, before the agent
reports a worker's exit. A worker dies with its agent (`PR_SET_PDEATHSIG`), as a device that leaves takes
its work with it, and a session's workers are killed when the command that started them disconnects.
"""
from __future__ import annotations

import base64
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edgepool.device import Device
from edgepool.local_device import detect_accelerator, measure_local_device
from edgepool.pool.channel import Channel, ChannelClosed, Refused, accept, connect, serve_connections
from edgepool.runtime.harness import worker_argv, write_job

log = logging.getLogger("edgepool.pool")

# The code an agent will run: edgepool's worker entry points, nothing a job could name otherwise.
WORKER_MODULES = frozenset({
    "edgepool.runtime.worker",
    "edgepool.elastic.worker",
    "edgepool.inference.worker",
    "edgepool.finetune.collaborative_worker",
    "edgepool.llm.stage_worker",
    "edgepool.runtime.probes.comm_worker",
    "edgepool.runtime.probes.speed_worker",
})
SYNC_EVERY_S = 0.2
MAX_SYNCED_FILE_BYTES = 512 * 2**20


@dataclass
class AgentConfig:
    name: str
    key: bytes
    join: tuple[str, int] | None = None  # the coordinator's address; None: discover it by mDNS
    pool: str | None = None  # with discovery: only this pool's coordinator
    host: str = "0.0.0.0"
    port: int = 0  # the agent's own port (job sessions, link probes); 0: any free one
    work_dir: Path | None = None  # where job folders go; None: a temporary folder
    heartbeat_s: float = 1.0
    discovery_timeout_s: float = 30.0
    reconnect_s: float = 2.0
    # what this device's owner lets jobs start (set here, on the device; never by a job)
    worker_modules: frozenset[str] = WORKER_MODULES
    # modules whose code a job may name (a model factory, iteration hooks): none unless the owner says so
    code_modules: frozenset[str] = frozenset()


class Agent:
    """One device of the pool (see the module docstring); `run` blocks until `stop` is set."""

    def __init__(self, config: AgentConfig, device: Device | None = None):
        self.config, self.device = config, device
        self.stop = threading.Event()
        self.work_dir = config.work_dir or Path(tempfile.mkdtemp(prefix=f"edgepool-agent-{config.name}-"))
        self.sessions: list[JobSession] = []
        self.ifname = ""  # the interface the pool is reached on (gloo binds its workers' sockets there)
        self.listener: socket.socket | None = None
        self.coordinator: Channel | None = None

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start_listening(self) -> None:
        self.listener = socket.create_server((self.config.host, self.config.port), reuse_port=False)
        serve_connections(self.listener, self._serve, self.stop, "agent-session")

    def run(self) -> None:
        """Measure, listen, join; rejoin whenever the coordinator is lost. Raises `Refused` on a wrong key."""
        if self.device is None:
            self.device = measure_local_device(self.config.name)
        if self.listener is None:
            self.start_listening()
        try:
            while not self.stop.is_set():
                address = self._find_coordinator()
                if address is None:
                    continue
                try:
                    self._member_of(*address)
                except Refused:
                    raise
                except (ChannelClosed, OSError, TimeoutError) as exc:
                    log.warning("coordinator %s:%s: %s; rejoining in %.0f s", *address, exc, self.config.reconnect_s)
                self.stop.wait(self.config.reconnect_s)
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        for session in list(self.sessions):
            session.close()
        if self.listener is not None:
            self.listener.close()
        if self.coordinator is not None:
            self.coordinator.close()
        if self.config.work_dir is None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------------ membership
    def _find_coordinator(self) -> tuple[str, int] | None:
        if self.config.join is not None:
            return self.config.join
        from edgepool.pool.discovery import discover
        found = discover(self.config.pool, timeout_s=self.config.discovery_timeout_s)
        if found is None:
            log.warning("no pool coordinator announced on the LAN yet (mDNS); still looking. Where multicast "
                        "does not reach, use --join HOST:PORT")
            return None
        log.info("found pool %r at %s:%d (mDNS)", found.pool, found.host, found.port)
        return found.host, found.port

    def _member_of(self, host: str, port: int) -> None:
        """Join the coordinator at host:port and serve it until the connection is lost."""
        info = {"device": self.device.model_dump(mode="json"), "agent_port": self.port,
                "accelerator": detect_accelerator()}
        channel, welcome = connect(host, port, self.config.key, "agent", self.config.name, info)
        self.coordinator = channel
        self.ifname = _interface_of(channel.local_address)
        log.info("joined pool %r at %s:%d as %s (interface %s)", welcome.get("pool"), host, port,
                 self.config.name, self.ifname or "?")
        beat = threading.Thread(target=self._heartbeat, args=(channel,), daemon=True, name="agent-heartbeat")
        beat.start()
        while not self.stop.is_set():
            message = channel.recv()
            if message["type"] == "probe":
                threading.Thread(target=self._probe, args=(channel, message), daemon=True).start()

    def _heartbeat(self, channel: Channel) -> None:
        psutil.cpu_percent(interval=None)
        while not self.stop.wait(self.config.heartbeat_s):
            try:
                channel.send({"type": "heartbeat", "time": time.time(),
                              "utilization": psutil.cpu_percent(interval=None) / 100.0,
                              "workers": sum(s.running() for s in self.sessions)})
            except ChannelClosed:
                return

    def _probe(self, channel: Channel, message: dict) -> None:
        """Measure the link to another agent (its port, role "probe") and report to the coordinator."""
        from edgepool.pool.linkprobe import run_probe
        reply = {"type": "probe_result", "id": message["id"], "peer": message["peer"]}
        try:
            peer, _ = connect(message["address"], int(message["port"]), self.config.key, "probe", self.config.name)
            try:
                reply["measurement"] = run_probe(peer.sock, seconds=float(message.get("seconds", 1.0))).to_dict()
            finally:
                peer.close()
        except (OSError, ConnectionError, TimeoutError, ValueError) as exc:  # ValueError: bad probe settings
            reply["error"] = str(exc)
        try:
            channel.send(reply)
        except ChannelClosed:
            pass

    # ------------------------------------------------------------------ the agent's own port
    def _serve(self, sock: socket.socket) -> None:
        accepted = accept(sock, self.config.key, roles=("client", "probe"), welcome={"device": self.config.name})
        if accepted is None:
            return
        channel, hello = accepted
        if hello.role == "probe":
            from edgepool.pool.linkprobe import serve_probe
            try:
                serve_probe(channel.sock)
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("link probe from %s broke off: %s", hello.name, exc)
            finally:
                channel.close()
            return
        session = JobSession(self, channel, len(self.sessions))
        self.sessions.append(session)
        try:
            session.run()
        finally:
            session.close()
            self.sessions.remove(session)


@dataclass
class _Worker:
    id: str
    process: subprocess.Popen
    folder: str  # the command's folder, as the command named it
    reported: bool = False


@dataclass
class JobSession:
    """A command's connection to this agent: the workers it started and the folders they write to."""

    agent: Agent
    channel: Channel
    number: int
    folders: dict[str, Path] = field(default_factory=dict)  # the command's folder -> this agent's
    workers: dict[str, _Worker] = field(default_factory=dict)
    sent: dict[Path, tuple[float, int]] = field(default_factory=dict)
    ours: set[Path] = field(default_factory=set)  # job files we wrote: never sent back

    def running(self) -> int:
        return sum(w.process.poll() is None for w in self.workers.values())

    def run(self) -> None:
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(done,), daemon=True, name="agent-sync")
        watcher.start()
        try:
            while True:
                message = self.channel.recv()
                handler = {"spawn": self._spawn, "signal": self._signal, "free_port": self._free_port}.get(
                    message["type"])
                if handler is None:
                    self.channel.send({"type": "error", "id": message.get("id"),
                                       "reason": f"unknown request {message['type']!r}"})
                    continue
                handler(message)
        except ChannelClosed:
            pass
        finally:
            done.set()

    def close(self) -> None:
        for w in self.workers.values():
            _kill_group(w.process)
        self.channel.close()
        for folder in self.folders.values():
            shutil.rmtree(folder, ignore_errors=True)

    def _spawn(self, message: dict) -> None:
        wid, module = str(message["id"]), message.get("module")
        if module not in self.agent.config.worker_modules:
            self.channel.send({"type": "exited", "id": wid, "returncode": 126,
                               "reason": f"this agent runs only edgepool's workers; {module!r} is not one"})
            return
        try:
            log_name = _inside(str(message["log"]))
        except ValueError as exc:
            self.channel.send({"type": "exited", "id": wid, "returncode": 126, "reason": str(exc)})
            return
        foreign = [c for c in _named_code(message["payload"])
                   if c.partition(":")[0].split(".")[0] not in self.agent.config.code_modules]
        if foreign:
            self.channel.send({"type": "exited", "id": wid, "returncode": 126,
                               "reason": f"the job names code of its own ({', '.join(foreign)}); this agent "
                                         "runs it only if its owner allows the module (edgepool agent "
                                         "--allow-module MODULE)"})
            return
        remote = str(message["folder"])
        local = self.folders.get(remote)
        if local is None:
            local = self.folders[remote] = self.agent.work_dir / f"s{self.number}-{len(self.folders)}"
            local.mkdir(parents=True, exist_ok=True)
        job = write_job(_rebase(message["payload"], remote, str(local)), local, Path(message["job_name"]).name)
        self.ours.add(job)
        log_path = local / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", **{str(k): str(v) for k, v in message.get("env", {}).items()},
               "EDGEPOOL_DEVICE": self.agent.config.name, "EDGEPOOL_LAUNCHER": "pool", "PYTHONUNBUFFERED": "1"}
        if self.agent.ifname:
            env["GLOO_SOCKET_IFNAME"] = self.agent.ifname
        with open(log_path, "w") as out:
            process = subprocess.Popen(worker_argv(module, job), env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=_die_with_parent, cwd=local)
        self.workers[wid] = _Worker(wid, process, remote)
        self.channel.send({"type": "started", "id": wid, "pid": process.pid})

    def _signal(self, message: dict) -> None:
        worker = self.workers.get(str(message["id"]))
        if worker is not None and worker.process.poll() is None:
            try:
                os.killpg(worker.process.pid, int(message["signal"]))
            except ProcessLookupError:
                pass

    def _free_port(self, message: dict) -> None:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        self.channel.send({"type": "free_port", "id": message.get("id"), "port": port})

    def _watch(self, done: threading.Event) -> None:
        """Send what changed in the job folders, then report the workers that exited (after their last files)."""
        while not done.wait(SYNC_EVERY_S):
            try:
                exited = [w for w in self.workers.values() if not w.reported and w.process.poll() is not None]
                self._sync()
                for w in exited:
                    self.channel.send({"type": "exited", "id": w.id, "returncode": w.process.returncode})
                    w.reported = True
            except ChannelClosed:
                return

    def _sync(self) -> None:
        for remote, local in list(self.folders.items()):
            changed = {}
            for path in sorted(p for p in local.rglob("*") if p.is_file() and p not in self.ours):
                try:
                    st = path.stat()
                except FileNotFoundError:  # an atomic write's temporary file, renamed meanwhile
                    continue
                if path.name.endswith(".tmp") or st.st_size > MAX_SYNCED_FILE_BYTES:
                    continue
                stamp = (st.st_mtime, st.st_size)
                if self.sent.get(path) == stamp:
                    continue
                try:
                    changed[str(path.relative_to(local))] = base64.b64encode(path.read_bytes()).decode()
                except FileNotFoundError:
                    continue
                self.sent[path] = stamp
            if changed:
                self.channel.send({"type": "files", "folder": remote, "files": changed})


def _rebase(value, remote: str, local: str):
    """`value` with every path into the command's folder pointing into ours instead."""
    if isinstance(value, str) and (value == remote or value.startswith(remote.rstrip("/") + "/")):
        return local + value[len(remote.rstrip("/")):]
    if isinstance(value, dict):
        return {k: _rebase(v, remote, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, remote, local) for v in value]
    return value


def _named_code(value) -> list[str]:
    """The "module:attribute" names a job asks its worker to import and call: model factories and hooks."""
    if isinstance(value, dict):
        named = [value["factory"]] if isinstance(value.get("factory"), str) else []
        named += [h for h in value.get("hooks") or [] if isinstance(h, str)]
        return named + [c for k, v in value.items() if k not in ("factory", "hooks") for c in _named_code(v)]
    if isinstance(value, list):
        return [c for v in value for c in _named_code(v)]
    return []


def _inside(relative: str) -> Path:
    """A relative path that stays inside its folder (a job cannot make the agent write elsewhere)."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"not a path inside the job folder: {relative!r}")
    return path


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the worker, before exec: the kernel kills it when the agent dies (a device that leaves)."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers outlive a killed agent there
        pass


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def _interface_of(address: str) -> str:
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addrs):
            return name
    return ""

