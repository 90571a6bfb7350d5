"""The edge-cloud link: framed messages over one TCP connection that the edge keeps alive on its own.

The edge must never stop serving because of the link, so it talks to the cloud through `EdgeLink`, whose
threads own the socket: `upload()` only queues a frame; a sender thread connects (again, with backoff,
after the link drops) and sends what is queued, oldest first; a receiver thread keeps the newest state
the cloud sent back. The serving loop waits for a reply at most `reply_timeout_s`, and not at all while
an earlier reply is overdue (the link is down: serve with the last parameters, keep queueing).

A frame is a 16-byte header (kind, sequence number, payload length) and the payload:

    UPLD seq  images (messages.encode_upload)      edge -> cloud
    STAT seq  normalization state (encode_state)   cloud -> edge, answering upload `seq`
    BYE_ 0    nothing                              edge -> cloud: the stream is over

`serve_cloud` is the cloud's side: it answers every upload once (an upload re-sent after a reconnect is
answered with the current state, not learnt from twice) and accepts the edge again after a drop.
"""
from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

HEADER = struct.Struct(">4sIQ")  # kind, seq, payload bytes
UPLOAD, STATE, BYE = b"UPLD", b"STAT", b"BYE_"


class LinkClosed(ConnectionError):
    """The peer closed the connection (or it broke) in the middle of a frame."""


def send_frame(sock: socket.socket, kind: bytes, seq: int, payload: bytes = b"") -> int:
    """Send one frame; returns the bytes put on the wire (header included)."""
    sock.sendall(HEADER.pack(kind, seq, len(payload)) + payload)
    return HEADER.size + len(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise LinkClosed(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> tuple[bytes, int, bytes]:
    """(kind, seq, payload) of the next frame."""
    kind, seq, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    return kind, seq, _recv_exact(sock, length) if length else b""


@dataclass
class LinkStats:
    """What crossed the link, as the edge saw it (header bytes included)."""
    bytes_up: int = 0
    bytes_down: int = 0
    uploads_sent: int = 0
    states_received: int = 0
    connects: int = 0
    drops: int = 0  # connections that broke (each is followed by a reconnect attempt)
    resent: int = 0  # uploads sent again after a drop
    dropped_uploads: int = 0  # the oldest queued uploads discarded because the queue was full
    reply_timeouts: int = 0
    events: list[str] = field(default_factory=list)


class EdgeLink:
    """The edge's end: queue uploads, read back the newest state; survives drops (see the module docstring)."""

    def __init__(self, host: str, port: int, *, reply_timeout_s: float = 10.0, connect_timeout_s: float = 2.0,
                 max_pending: int = 64, retry_s: float = 0.2, max_retry_s: float = 2.0):
        self.address = (host, port)
        self.reply_timeout_s, self.connect_timeout_s = reply_timeout_s, connect_timeout_s
        self.max_pending, self.retry_s, self.max_retry_s = max_pending, retry_s, max_retry_s
        self.stats = LinkStats()
        self._pending: collections.deque[tuple[int, bytes]] = collections.deque()  # not yet answered
        self._unsent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._state: tuple[int, bytes] | None = None  # newest (seq, payload) from the cloud
        self._answered = 0  # highest seq answered
        self._sent_at: dict[int, float] = {}
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._closing = False
        self._held = False  # hold(): the link is cut on purpose (an emulated outage)
        self._next_seq = 1
        self._thread = threading.Thread(target=self._run, name="edge-link", daemon=True)
        self._started = time.monotonic()

    # ---------------------------------------------------------------- the serving loop's calls
    def start(self) -> "EdgeLink":
        self._thread.start()
        return self

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait for the first connection (a stream should not start while the link is still coming up)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sock is not None, timeout=timeout_s)

    def upload(self, payload: bytes) -> int:
        """Queue one upload; returns its sequence number. Never blocks on the network."""
        with self._cond:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            self._unsent.append((seq, payload))
            self._pending.append((seq, payload))
            while len(self._pending) > self.max_pending:  # the link has been down long: forget the oldest
                old, _ = self._pending.popleft()
                self._unsent = collections.deque(u for u in self._unsent if u[0] != old)
                self.stats.dropped_uploads += 1
            self._cond.notify_all()
        return seq

    @property
    def healthy(self) -> bool:
        """Connected, and no reply overdue: worth waiting for the next one."""
        with self._cond:
            if self._sock is None:
                return False
            now = time.monotonic()
            return not any(now - t > self.reply_timeout_s for s, t in self._sent_at.items() if s > self._answered)

    def wait_reply(self, seq: int, timeout_s: float | None = None) -> bool:
        """Wait until upload `seq` (or a later one) is answered; False after the timeout."""
        timeout_s = self.reply_timeout_s if timeout_s is None else timeout_s
        with self._cond:
            ok = self._cond.wait_for(lambda: self._answered >= seq, timeout=timeout_s)
            if not ok:
                self.stats.reply_timeouts += 1
            return ok

    def newest_state(self) -> tuple[int, bytes] | None:
        """The newest state the cloud sent (its upload's seq, payload), or None."""
        with self._cond:
            return self._state

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Wait (bounded) for queued uploads to go out and be answered, say goodbye, stop the threads."""
        deadline = time.monotonic() + flush_timeout_s
        with self._cond:
            self._cond.wait_for(lambda: not self._pending, timeout=max(0.0, deadline - time.monotonic()))
            self._closing = True
            sock = self._sock
            self._cond.notify_all()
        if sock is not None:
            try:
                send_frame(sock, BYE, 0)
            except OSError:
                pass
        self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
        self._disconnect()

    def hold(self, cut: bool) -> None:
        """Cut the link (close the connection, connect no more) or restore it: an outage emulated in the edge's
        own process, for where the network itself cannot be taken down (no root, loopback)."""
        with self._cond:
            self._held = cut
            sock = self._sock
            self._cond.notify_all()
        if not cut:
            return self.note("link released")
        self.note("link held down")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def note(self, text: str) -> None:
        with self._cond:
            self.stats.events.append(f"{time.monotonic() - self._started:7.2f}s {text}")

    # ---------------------------------------------------------------- the link's threads
    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
        except OSError:
            return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _disconnect(self) -> None:
        with self._cond:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _run(self) -> None:
        """Sender: (re)connect, re-queue what was not answered, send queued uploads in order."""
        delay = self.retry_s
        while True:
            with self._cond:
                if self._closing:
                    return
                held = self._held
            sock = None if held else self._connect()
            if sock is None:
                with self._cond:  # hold(False) and close() wake this early
                    self._cond.wait_for(lambda: self._closing or self._held != held, timeout=delay)
                delay = min(self.max_retry_s, delay * 2)
                continue
            delay = self.retry_s
            with self._cond:
                self._sock = sock
                self.stats.connects += 1
                self._cond.notify_all()
                if self.stats.connects > 1:  # uploads sent on the broken connection but never answered
                    unsent = {s for s, _ in self._unsent}
                    again = [u for u in self._pending if u[0] not in unsent]
                    self.stats.resent += len(again)
                    self._unsent = collections.deque(sorted([*again, *self._unsent]))
            self.note(f"connected to {self.address[0]}:{self.address[1]}")
            receiver = threading.Thread(target=self._receive, args=(sock,), name="edge-link-rx", daemon=True)
            receiver.start()
            try:
                while True:
                    with self._cond:
                        self._cond.wait_for(lambda: self._unsent or self._closing or self._sock is not sock)
                        if self._closing or self._sock is not sock:
                            break
                        seq, payload = self._unsent.popleft()
                        self._sent_at[seq] = time.monotonic()
                    sent = send_frame(sock, UPLOAD, seq, payload)
                    with self._cond:
                        self.stats.bytes_up += sent
                        self.stats.uploads_sent += 1
            except OSError as exc:
                with self._cond:  # the frame being sent goes out again after the reconnect
                    self._unsent.appendleft((seq, payload))
                self._lost(sock, f"send failed: {exc}")
            receiver.join(timeout=0.5)

    def _receive(self, sock: socket.socket) -> None:
        try:
            while True:
                kind, seq, payload = recv_frame(sock)
                if kind != STATE:
                    raise LinkClosed(f"unexpected frame {kind!r} from the cloud")
                with self._cond:
                    self.stats.bytes_down += HEADER.size + len(payload)
                    self.stats.states_received += 1
                    if self._state is None or seq >= self._state[0]:
                        self._state = (seq, payload)
                    self._answered = max(self._answered, seq)
                    for s in [s for s in self._sent_at if s <= seq]:
                        del self._sent_at[s]
                    while self._pending and self._pending[0][0] <= seq:
                        self._pending.popleft()
                    self._cond.notify_all()
        except (OSError, LinkClosed) as exc:
            with self._cond:
                closing = self._closing
            if not closing:
                self._lost(sock, f"receive failed: {exc}")

    def _lost(self, sock: socket.socket, why: str) -> None:
        with self._cond:
            if self._sock is not sock:
                return
            self.stats.drops += 1
            self._cond.notify_all()
        self.note(f"link lost ({why})")
        self._disconnect()


@dataclass
class CloudStats:
    uploads: int = 0  # uploads learnt from
    repeats: int = 0  # uploads seen again after a reconnect (answered, not learnt from twice)
    connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    handle_s: float = 0.0


def serve_cloud(listener: socket.socket, handle: Callable[[bytes], bytes], *, idle_timeout_s: float = 600.0,
                stats: CloudStats | None = None) -> CloudStats:
    """Answer uploads with `handle(payload) -> state payload` until the edge says goodbye (or nobody has
    connected for `idle_timeout_s`). Accepts the edge again after a broken connection."""
    stats = stats or CloudStats()
    answered, last_state = 0, b""
    listener.settimeout(idle_timeout_s)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            return stats
        stats.connections += 1
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                kind, seq, payload = recv_frame(conn)
                stats.bytes_in += HEADER.size + len(payload)
                if kind == BYE:
                    return stats
                if kind != UPLOAD:
                    raise LinkClosed(f"unexpected frame {kind!r} from the edge")
                if seq > answered:
                    t0 = time.perf_counter()
                    last_state = handle(payload)
                    stats.handle_s += time.perf_counter() - t0
                    stats.uploads += 1
                    answered = seq
                else:
                    stats.repeats += 1
                stats.bytes_out += send_frame(conn, STATE, seq, last_state)
        except (OSError, LinkClosed):
            pass  # the edge will connect again
        finally:
            conn.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (address reuse on: a test or a rerun may bind the port again at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1)
    return sock
