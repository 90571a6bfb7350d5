"""Failure detection through the `torch.distributed` TCPStore, and waits that a failure can interrupt.

Workers beat (`hb/<device>` = wall-clock time) from a daemon thread on their own store connection. The
supervisor, which hosts the store and outlives every worker, declares a device dead when its process exits or
its heartbeat is older than `timeout_s`, and then sets `abort/<generation>`. Gloo only reports a dead peer to
the rank that waits on it directly, so each worker runs an `AbortWatcher` that, once the abort key appears,
shuts down the process group's sockets: every pending wait fails at once and the worker leaves the
generation. The process group's own timeout (`collective_timeout_s`) bounds anything else.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import threading
import time

import torch.distributed as dist


class PeerFailure(RuntimeError):
    """The current generation was aborted (a device left or failed); leave it and await the next."""


def connect(host: str, port: int, timeout_s: float = 60.0) -> dist.TCPStore:
    return dist.TCPStore(host, port, is_master=False, timeout=_dt.timedelta(seconds=timeout_s))


class Heartbeat:
    """A daemon thread writing `hb/<device>` every `interval_s` on its own store connection."""

    def __init__(self, host: str, port: int, device: str, interval_s: float = 0.2):
        self.device, self.interval_s = device, interval_s
        self.store = connect(host, port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{device}", daemon=True)

    def start(self) -> "Heartbeat":
        self.store.set(f"hb/{self.device}", repr(time.time()))
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.set(f"hb/{self.device}", repr(time.time()))
            except Exception:  # the supervisor is gone: nothing left to tell
                return

    def stop(self) -> None:
        self._stop.set()


def stale_devices(store: dist.TCPStore, devices: list[str], timeout_s: float, now: float | None = None) -> list[str]:
    """Devices whose last heartbeat is older than `timeout_s` (a device that never beat is not stale yet)."""
    now = time.time() if now is None else now
    out = []
    for d in devices:
        key = f"hb/{d}"
        if store.check([key]) and now - float(store.get(key)) > timeout_s:
            out.append(d)
    return out


def shutdown_peer_sockets(store_port: int) -> int:
    """Shut down this process's connected TCP sockets except those to the store: gloo's pending operations
    then fail at once ("connection closed") here and on every peer, instead of waiting for their timeout."""
    import psutil

    count = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if not conn.raddr or conn.raddr.port == store_port or conn.fd < 0:
            continue
        try:
            sock = socket.socket(fileno=os.dup(conn.fd))
        except OSError:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            count += 1
        except OSError:
            pass
        finally:
            sock.close()
    return count


class AbortWatcher:
    """A daemon thread that watches `abort/<generation>`; when it appears, it breaks the process group's
    connections so that whatever the worker waits on fails now (gloo cannot time out a point-to-point wait
    and carry on: a timed-out receive closes the connection anyway, and `is_completed()` of a receive never
    turns true before `wait()`, so polling is no option)."""

    def __init__(self, host: str, port: int, generation: int, check_s: float = 0.005):
        self.key, self.port, self.check_s = f"abort/{generation}", port, check_s
        self.store = connect(host, port)
        self.aborted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"abort-watch-{generation}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                hit = self.store.check([self.key])
            except Exception:
                return
            if hit:
                self.aborted.set()
                shutdown_peer_sockets(self.port)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class AbortableWait:
    """Wait for an async gloo work; if the generation was aborted meanwhile, raise PeerFailure."""

    def __init__(self, watcher: AbortWatcher):
        self.watcher = watcher
        self.waited_s = 0.0

    def __call__(self, work) -> None:
        if self.watcher.aborted.is_set():
            raise PeerFailure(f"generation aborted ({self.watcher.key})")
        start = time.monotonic()
        try:
            work.wait()
        except Exception as exc:
            if self.watcher.aborted.is_set():
                raise PeerFailure(f"generation aborted ({self.watcher.key})") from exc
            raise
        self.waited_s += time.monotonic() - start
