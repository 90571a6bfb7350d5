"""Launchers start one worker process per device with the environment `torch.distributed` expects.

`Launcher` is the one interface the runtimes use: `launch(commands_per_device, env) -> handles`,
`wait()`, `teardown()`, also as a context manager. `LocalLauncher` runs plain subprocesses talking over
loopback; `edgepool.testbed.Testbed` runs each one in its device's cgroup and network namespace.
`make_launcher("testbed", cluster)` falls back to `local`, saying why, when the testbed cannot run.

Each worker gets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (so
`dist.init_process_group("gloo")` with the default env:// works), GLOO_SOCKET_IFNAME, EDGEPOOL_DEVICE
(its device name), EDGEPOOL_LAUNCHER and OMP_NUM_THREADS=1 unless the caller sets it.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ContextManager, Mapping, Protocol, Sequence, runtime_checkable

log = logging.getLogger("edgepool.testbed")


class WorkerFailed(RuntimeError):
    """A worker exited with a non-zero status (or was killed); the other workers were stopped.

    The message is one line: the device, the status and the cause (the last error line of its log); the
    whole log stays at `log_path`, its last lines in `log_tail`.
    """

    def __init__(self, device: str, rank: int, returncode: int, reason: str = "", log_tail: str = "",
                 log_path: Path | None = None):
        self.device, self.rank, self.returncode, self.reason, self.log_tail = device, rank, returncode, reason, log_tail
        self.log_path = log_path
        self.cause = failure_cause(log_tail)
        status = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        message = f"worker {rank} (device {device!r}) failed: {status}"
        for part in (reason, self.cause):
            if part and part not in message:
                message += f"; {part}"
        if log_path is not None:
            message += f" (full log: {log_path})"
        super().__init__(message)


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Failed|Interrupt|Exit)\b|terminate called|"
                         r"Fatal Python error|Killed\b|RuntimeError)")


def failure_cause(log_tail: str) -> str:
    """The line of a worker's log that says why it died: a Python exception's last line, or an abort message."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:300]
    return ""


@dataclass
class WorkerHandle:
    """One started worker: its device, rank, address on the (emulated) network and process."""

    device: str
    rank: int
    address: str
    process: subprocess.Popen
    env: dict[str, str] = field(repr=False, default_factory=dict)
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()


@runtime_checkable
class Launcher(Protocol):
    kind: str

    def launch(self, commands: Mapping[str, Sequence[str]], env: Mapping[str, str] | None = None,
               log_dir: str | Path | None = None) -> list[WorkerHandle]: ...

    def wait(self, timeout: float | None = None) -> dict[str, int]: ...

    def teardown(self) -> None: ...

    def __enter__(self) -> "Launcher": ...

    def __exit__(self, *exc) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path | None, lines: int = 15) -> str:
    """The last lines of a worker's log ('' when there is none)."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class ProcessLauncher:
    """What every launcher shares: environment, spawning, waiting, stopping, signal handling."""

    kind = "process"
    grace_s = 1.0  # SIGTERM first, SIGKILL after this

    def __init__(self) -> None:
        self.handles: list[WorkerHandle] = []
        self._logs: list[IO] = []
        self._prev_handlers: dict[int, object] = {}
        self._tearing_down = False
        self._pending_signal: int | None = None
        self._launches = 0

    # -- hooks for subclasses
    def address(self, device: str) -> str:
        return "127.0.0.1"

    def ifname(self, device: str) -> str:
        return "lo"

    def _master_port(self) -> int:
        return free_port()

    def _wrap(self, device: str, argv: list[str]) -> list[str]:
        return argv

    def _failure_reason(self, handle: WorkerHandle) -> str:
        return ""

    def _worker_env(self, device: str) -> dict[str, str]:
        return {}

    # -- lifecycle
    def start(self) -> "ProcessLauncher":
        self._install_signal_handlers()
        atexit.register(self.teardown)
        return self

    def __enter__(self) -> "ProcessLauncher":
        try:
            return self.start()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        self.teardown()

    def launch(self, commands: Mapping[str, Sequence[str]], env: Mapping[str, str] | None = None,
               log_dir: str | Path | None = None) -> list[WorkerHandle]:
        """Start `commands[device]` for each device; rank = position in `commands`; returns the handles."""
        if not commands:
            raise ValueError("launch needs at least one command (a mapping device name -> argv)")
        if any(h.poll() is None for h in self.handles):
            raise RuntimeError("workers of the previous launch are still running; wait() or teardown() first")
        self.handles = []
        self._launches += 1
        devices = list(commands)
        master_addr, master_port = self.address(devices[0]), self._master_port()
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        for rank, device in enumerate(devices):
            if not commands[device]:
                raise ValueError(f"commands[{device!r}] is empty; give an argv list such as ['python', 'w.py']")
            rendezvous = {"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
                          "RANK": str(rank), "WORLD_SIZE": str(len(devices)),
                          "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(len(devices))}
            self.spawn(device, commands[device], {**(env or {}), **rendezvous},
                       None if log_dir is None else Path(log_dir) / f"rank{rank}-{device}.log", rank)
        return self.handles

    def spawn(self, device: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              log_path: str | Path | None = None, rank: int = -1) -> WorkerHandle:
        """Start one process as `device` (on the testbed: in its cgroup and namespace) and keep its handle, so
        that teardown stops it too. Sets no rendezvous variables: for callers that bring their own store and
        start, restart or add workers one at a time (elastic training); `launch` starts a whole group."""
        argv = [str(a) for a in argv]
        if not argv:
            raise ValueError(f"the command for {device!r} is empty; give an argv list such as ['python', 'w.py']")
        worker_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
                      "GLOO_SOCKET_IFNAME": self.ifname(device), "EDGEPOOL_DEVICE": device,
                      "EDGEPOOL_LAUNCHER": self.kind, "PYTHONUNBUFFERED": "1", **self._worker_env(device)}
        out = None
        if log_path is not None:
            log_path = Path(log_path)
            out = open(log_path, "w")
            self._logs.append(out)
        process = subprocess.Popen(self._wrap(device, argv), env=worker_env, stdout=out,
                                   stderr=subprocess.STDOUT if out else None, start_new_session=True)
        handle = WorkerHandle(device, rank, self.address(device), process, worker_env, log_path)
        self.handles.append(handle)
        return handle

    def coordinator_address(self) -> str:
        """Where a coordinator (a TCPStore) hosted by this process is reachable from every worker."""
        return "127.0.0.1"

    def coordinator_namespace(self) -> ContextManager:
        """Open the coordinator's listening socket inside this, so that `coordinator_address` reaches it."""
        return contextlib.nullcontext()

    def wait(self, timeout: float | None = None, poll_s: float = 0.1) -> dict[str, int]:
        """Wait for all workers; on the first failure stop the others and raise WorkerFailed.

        Returns device -> exit status (all 0). Raises TimeoutError (after stopping them) past `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = {h.device: h.poll() for h in self.handles}
            failures = [(self._failure_reason(h), h) for h in self.handles if h.poll() not in (None, 0)]
            if failures:
                # when several have failed, the likely cause first: an explained death, a signal, the lowest rank
                reason, failed = min(failures, key=lambda f: (not f[0], f[1].poll() > 0, f[1].rank))
                self.stop_workers()
                raise WorkerFailed(failed.device, failed.rank, failed.poll(), reason, log_tail(failed.log_path),
                                   failed.log_path)
            if all(c == 0 for c in codes.values()):
                return codes
            if deadline is not None and time.monotonic() > deadline:
                self.stop_workers()
                raise TimeoutError(f"workers still running after {timeout} s: "
                                   + ", ".join(d for d, c in codes.items() if c is None))
            time.sleep(poll_s)

    def send_signal(self, handle: WorkerHandle, signum: int) -> None:
        """Send `signum` to one worker's whole process group (children of the worker too)."""
        _signal_group(handle.pid, signum)

    def kill(self, handle: WorkerHandle) -> None:
        """SIGKILL one worker and reap it (a fenced or failure-injected device)."""
        if handle.poll() is None:
            self.send_signal(handle, signal.SIGKILL)
        self._reap(handle, timeout=10)

    def stop_workers(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after `grace_s`, reap them."""
        alive = [h for h in self.handles if h.poll() is None]
        for h in alive:
            self.send_signal(h, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while any(h.poll() is None for h in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        for h in alive:
            self.send_signal(h, signal.SIGKILL)
        for h in self.handles:
            self._reap(h, timeout=5)

    @staticmethod
    def _reap(handle: WorkerHandle, timeout: float) -> None:
        try:
            handle.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker %s (pid %s) did not exit after SIGKILL", handle.device, handle.pid)

    def teardown(self) -> None:
        """Stop the workers and release what the launcher holds; safe to call more than once."""
        self._tearing_down = True
        try:
            self.stop_workers()
            for f in self._logs:
                f.close()
            self._logs = []
            self._release()
        finally:
            atexit.unregister(self.teardown)
            self._restore_signal_handlers()
            self._tearing_down = False
        if self._pending_signal is not None:
            signum, self._pending_signal = self._pending_signal, None
            self._raise_for(signum)

    def _release(self) -> None:
        """Subclasses free their host resources here."""

    # -- signals: SIGINT/SIGTERM become exceptions so that `with` blocks and atexit tear down
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._prev_handlers:
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._prev_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._prev_handlers.items():
            signal.signal(signum, handler)
        self._prev_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        if self._tearing_down:  # finish tearing down first, raise afterwards
            self._pending_signal = signum
            return
        self._raise_for(signum)

    @staticmethod
    def _raise_for(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class LocalLauncher(ProcessLauncher):
    """Plain subprocesses on this machine; gloo talks over loopback. Needs nothing special."""

    kind = "local"

    def __init__(self, fallback_reason: str | None = None) -> None:
        super().__init__()
        self.fallback_reason = fallback_reason  # why a testbed was asked for but this runs instead

    def describe(self) -> dict:
        return {"launcher": "local", "network": "loopback, unshaped", "cpu": "unlimited", "memory": "unlimited",
                "fallback_reason": self.fallback_reason}


def make_launcher(kind: str, cluster=None, devices: Sequence[str] | None = None, fallback: bool = True,
                  **testbed_options) -> ProcessLauncher:
    """A launcher by name: "local", or "testbed" (falls back to local with a warning when it cannot run)."""
    from edgepool.errors import SpecError

    if kind == "local":
        return LocalLauncher()
    if kind != "testbed":
        raise SpecError(field="launcher", value=kind, accepted="local, testbed",
                        hint="across real hosts, `edgepool.runtime.launch.torchrun_commands` gives each host's "
                             "`torchrun` command")
    from edgepool.testbed.system import unavailable_reason
    from edgepool.testbed.testbed import Testbed

    if cluster is None:
        raise ValueError("the testbed launcher needs the cluster to emulate")
    reason = unavailable_reason()
    if reason is None:
        return Testbed(cluster, devices=devices, **testbed_options)
    if not fallback:
        from edgepool.testbed.system import TestbedUnavailable
        raise TestbedUnavailable(reason)
    log.warning("testbed unavailable: %s. Falling back to the local launcher: workers run as plain processes, "
                "without CPU/memory limits or link shaping, so measured times are NOT those of the cluster.", reason)
    return LocalLauncher(fallback_reason=reason)
