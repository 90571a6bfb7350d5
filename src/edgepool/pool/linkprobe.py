"""Bandwidth and round-trip time between two agents, measured over a TCP connection they already share.

What is measured:
- `rtt_s`: the smallest of a few round trips of a tiny message (application to application, so a few tens
  of microseconds of Python are included; on loopback it is of that order, on a real link the wire dominates).
- `bandwidth_bytes_per_s`: TCP goodput (payload bytes per second) in ONE direction, prober -> server. The
  prober streams payload for at most `seconds` or `max_bytes`, whichever ends first; the RECEIVER timestamps
  every read and reports bytes and duration, so whatever the sender's socket buffers hold when it stops
  cannot inflate the figure (they are counted when they arrive).
- TCP slow start (and a shaper's initial burst) is excluded: the receiver starts counting at a warm-up
  point, the first read at which either `WARMUP_FRACTION` (20%) of `seconds` has passed since the first
  payload arrived or 20% of `max_bytes` has arrived, whichever comes first (so a transfer capped by
  `max_bytes` on a fast link is timed as well as one capped by time on a slow link). The window runs from
  that read to the final burst of reads; `_Window` says how reads are credited and why.
- The session lasts about `seconds` on any link: where the kernel tells how much it still holds for the
  peer (Linux), the sender queues no more than the link drains by then (`_stream`), so a slow link does not
  keep the probe going for the megabytes a socket buffer holds.

What is not: loss, jitter, the reverse direction (probe from the other side for that), UDP, or the link's
raw rate (TCP/IP headers are not counted; on Ethernet goodput is about 1448/1514 of the wire rate).

The protocol, on an already connected and authenticated socket: frames of a 1-byte opcode, a 4-byte
big-endian length and that many bytes. The prober sends START (version, seconds, max_bytes, timeout) and the
server answers OK or ERR (a reason); then PING/PONG round trips, DATA frames, and END, which the server
answers with RESULT (bytes and seconds of the window, total payload received). Both sides are bounded: every
read and write has a timeout, the whole session a hard deadline (`timeout`), and the server refuses requests
beyond `MAX_SECONDS`, `MAX_BYTES` or `MAX_TIMEOUT_S`. A vanished or stalled peer raises `ProbeFailed` or
`ProbeTimeout` (a `ConnectionError`, and also a `TimeoutError` for the latter). Neither side closes the socket.
"""
from __future__ import annotations

import collections
import contextlib
import os
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Iterator

try:
    import fcntl
    import termios
except ImportError:  # not POSIX: the sender cannot see its queue and is not paced (see `_stream`)
    fcntl = termios = None  # type: ignore[assignment]

VERSION = 1
WARMUP_FRACTION = 0.2
CHUNK_BYTES = 256 * 1024  # payload per DATA frame
PACE_MIN_BYTES = 16 * 1024  # the paced sender waits rather than send frames smaller than this
PACE_S = 0.002  # and waits at most this long between looks at its queue
BURST_S = 0.002  # reads this close to the last one are its burst (see `_Window`)
MIN_WINDOW_S = 10 * BURST_S
MIN_FRAMES = 8  # a small max_bytes is still sent in this many frames, so the receiver reads it in steps
MIN_BYTES = 64 * 1024
MAX_BYTES = 4 * 2**30
MAX_SECONDS = 60.0
MAX_PINGS = 100
DRAIN_S = 10.0  # default slack after `seconds`: the pings, buffers left to drain, the result
MAX_TIMEOUT_S = MAX_SECONDS + 60.0
START_WAIT_S = 10.0  # how long the server waits for the prober's first frame
MAX_CONTROL_BYTES = 1024  # any frame but DATA is tiny

START, OK, ERR, PING, PONG, DATA, END, RESULT = (bytes([c]) for c in b"SKEPQDZR")
_HEADER = struct.Struct(">cI")
_START = struct.Struct(">HdQd")  # version, seconds, max_bytes, timeout
_RESULT = struct.Struct(">QdQ")  # bytes in the window, seconds of the window, payload bytes received in all


class ProbeFailed(ConnectionError):
    """The probe could not finish: the peer went away, refused, or broke the protocol."""


class ProbeTimeout(ProbeFailed, TimeoutError):
    """The peer stalled: a read or write did not finish before the probe's deadline."""


@dataclass(frozen=True)
class LinkMeasurement:
    """One probe's result, as the receiver timed it (see the module's docstring)."""

    bandwidth_bytes_per_s: float  # payload goodput, sender -> receiver
    rtt_s: float  # smallest of the ping round trips
    bytes: int  # payload bytes counted in the bandwidth window
    seconds: float  # length of that window

    def to_dict(self) -> dict:
        return asdict(self)


def serve_probe(sock: socket.socket) -> None:
    """Answer one probe session on an already connected (and already authenticated) socket, then return (not
    closing it). Raises `ProbeFailed`/`ProbeTimeout` if the prober vanishes, stalls or breaks the protocol."""
    saved = sock.gettimeout()
    try:
        with _errors("the prober"):
            _serve(sock)
    finally:
        _restore_timeout(sock, saved)


def run_probe(sock: socket.socket, *, seconds: float = 1.0, max_bytes: int = 64 * 2**20, pings: int = 5,
              timeout: float | None = None) -> LinkMeasurement:
    """The prober's side on a connected socket: `pings` round trips of a tiny message (the smallest is the
    RTT), then stream payload to the server for at most `seconds` or `max_bytes`; the RECEIVER timestamps what
    arrives and returns bytes and duration, so sender-side buffering can't inflate the figure.

    `timeout` is the hard limit on the whole session (default `seconds` + `DRAIN_S`): past it the probe raises
    `ProbeTimeout`, whatever the peer does."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS}], got {seconds}")
    if not MIN_BYTES <= max_bytes <= MAX_BYTES:
        raise ValueError(f"max_bytes must be in [{MIN_BYTES}, {MAX_BYTES}], got {max_bytes}")
    if not 1 <= pings <= MAX_PINGS:
        raise ValueError(f"pings must be in [1, {MAX_PINGS}], got {pings}")
    timeout = seconds + DRAIN_S if timeout is None else timeout
    if not seconds < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout must be in (seconds, {MAX_TIMEOUT_S}], got {timeout} for {seconds} s")

    deadline = time.monotonic() + timeout
    saved = sock.gettimeout()
    try:
        with _errors("the probed agent", timeout):
            _send(sock, START, _START.pack(VERSION, seconds, max_bytes, timeout), deadline)
            op, body = _recv_frame(sock, deadline)
            if op == ERR:
                raise ProbeFailed(f"refused: {body.decode(errors='replace')}")
            _expect(op, OK)
            rtt = min(_ping(sock, k, deadline) for k in range(pings))
            sent = _stream(sock, seconds, max_bytes, deadline)
            _send(sock, END, b"", deadline)
            op, body = _recv_frame(sock, deadline)
            _expect(op, RESULT)
            if len(body) != _RESULT.size:
                raise ProbeFailed(f"malformed probe result ({len(body)} bytes)")
    finally:
        _restore_timeout(sock, saved)
    counted, window, received = _RESULT.unpack(body)
    if received != sent:
        raise ProbeFailed(f"the probed agent received {received} payload bytes of the {sent} sent")
    if window <= 0 or counted <= 0:
        raise ProbeFailed(f"the transfer ({sent} bytes) was too short to time; raise seconds or max_bytes")
    return LinkMeasurement(bandwidth_bytes_per_s=counted / window, rtt_s=rtt, bytes=counted, seconds=window)


# ---- the two sides ---------------------------------------------------------------------------------------

def _serve(sock: socket.socket) -> None:
    op, body = _recv_frame(sock, time.monotonic() + START_WAIT_S)
    _expect(op, START)
    if len(body) != _START.size:
        raise ProbeFailed(f"malformed probe start ({len(body)} bytes)")
    version, seconds, max_bytes, timeout = _START.unpack(body)
    problem = _request_problem(version, seconds, max_bytes, timeout)
    deadline = time.monotonic() + (START_WAIT_S if problem else timeout)
    if problem:
        _send(sock, ERR, problem.encode(), deadline)
        raise ProbeFailed(f"refused a probe: {problem}")
    _send(sock, OK, b"", deadline)

    window = _Window(warmup_s=WARMUP_FRACTION * seconds, warmup_bytes=WARMUP_FRACTION * max_bytes)
    buffer = memoryview(bytearray(CHUNK_BYTES))
    while True:
        op, length = _recv_header(sock, deadline)
        if op == DATA:
            if length > CHUNK_BYTES or window.total + length > max_bytes:
                raise ProbeFailed(f"the prober sent more than it announced ({window.total + length} bytes)")
            _receive_payload(sock, length, buffer, window, deadline)
        elif op == PING and length <= MAX_CONTROL_BYTES:
            _send(sock, PONG, _recv_exact(sock, length, deadline), deadline)
        elif op == END and length == 0:
            _send(sock, RESULT, _RESULT.pack(*window.result(), window.total), deadline)
            return
        else:
            raise ProbeFailed(f"unexpected frame {op!r} of {length} bytes")


def _request_problem(version: int, seconds: float, max_bytes: int, timeout: float) -> str | None:
    if version != VERSION:
        return f"probe protocol version {version} is not supported (this agent speaks {VERSION})"
    if not 0 < seconds <= MAX_SECONDS:
        return f"seconds {seconds} is outside (0, {MAX_SECONDS}]"
    if not MIN_BYTES <= max_bytes <= MAX_BYTES:
        return f"max_bytes {max_bytes} is outside [{MIN_BYTES}, {MAX_BYTES}]"
    if not seconds < timeout <= MAX_TIMEOUT_S:
        return f"timeout {timeout} is outside ({seconds}, {MAX_TIMEOUT_S}]"
    return None


class _Window:
    """The receiver's clock: when payload arrived, and the counting window after the warm-up point.

    A read's bytes are credited to the time that follows it: the window runs from the warm-up read to the
    final burst (the reads within `BURST_S` of the last one) and counts the bytes of the reads in between. A
    shaper that releases whole GSO bursts (htb on a veth, as the testbed's: up to 64 KiB at once) delivers a
    burst at the start of the time it pays for, and the final burst has no time after it; on a smooth link
    the choice moves the figure by a few reads in hundreds. A transfer too short for that (under
    `MIN_WINDOW_S`, e.g. a small `max_bytes` on loopback) is counted from the warm-up read to the last one."""

    def __init__(self, warmup_s: float, warmup_bytes: float):
        self.warmup_s, self.warmup_bytes = warmup_s, warmup_bytes
        self.total = 0
        self.first: _Read | None = None
        self.mark: _Read | None = None  # the warm-up read
        self.tail: collections.deque[_Read] = collections.deque()  # the reads of the last BURST_S
        self.last = 0.0

    def arrived(self, n: int, now: float) -> None:
        read = _Read(now, self.total, self.total + n)
        self.total, self.last = read.after, now
        if self.first is None:
            self.first = read
        if self.mark is None and (now - self.first.at >= self.warmup_s or self.total >= self.warmup_bytes):
            self.mark = read
        self.tail.append(read)
        while self.tail[0].at < now - BURST_S:
            self.tail.popleft()

    def result(self) -> tuple[int, float]:
        """(bytes, seconds) of the window; it starts at the first read if no read came after the warm-up."""
        start = self.mark if self.mark is not None and self.last > self.mark.at else self.first
        if start is None:
            return 0, 0.0
        end = self.tail[0]
        if end.at - start.at >= MIN_WINDOW_S:
            return end.before - start.before, end.at - start.at
        return self.total - start.after, self.last - start.at


@dataclass(frozen=True)
class _Read:
    at: float
    before: int  # payload bytes received before this read
    after: int


def _receive_payload(sock: socket.socket, length: int, buffer: memoryview, window: _Window,
                     deadline: float) -> None:
    while length:
        _arm(sock, deadline)
        n = sock.recv_into(buffer, length)
        now = time.perf_counter()
        if n == 0:
            raise ProbeFailed("the connection closed in the middle of the transfer")
        window.arrived(n, now)
        length -= n


def _ping(sock: socket.socket, k: int, deadline: float) -> float:
    token = struct.pack(">Q", k)
    start = time.perf_counter()
    _send(sock, PING, token, deadline)
    op, body = _recv_frame(sock, deadline)
    rtt = time.perf_counter() - start
    _expect(op, PONG)
    if body != token:
        raise ProbeFailed("the probed agent answered a ping with the wrong token")
    return rtt


def _stream(sock: socket.socket, seconds: float, max_bytes: int, deadline: float) -> int:
    """Send DATA frames until `seconds` have passed or `max_bytes` are sent; the payload bytes sent.

    Where the kernel tells how many bytes it still holds for the peer (`_queued`), the sender keeps no more
    queued than the link drains by the end of `seconds`, at the rate it has delivered so far: on a slow link
    the transfer then ends near `seconds` instead of after megabytes of socket buffers (and shaper queues)
    have drained. On a fast link the limit is far above what is queued and never holds the sender back."""
    chunk = min(CHUNK_BYTES, -(-max_bytes // MIN_FRAMES))
    payload = os.urandom(chunk)  # incompressible, should anything on the path compress
    full_frame = _HEADER.pack(DATA, chunk) + payload
    start = time.monotonic()
    stop = start + seconds
    sent = wire = 0  # payload bytes; bytes with the frame headers
    while sent < max_bytes:
        _arm(sock, deadline)  # a stalled peer ends the probe here or in sendall
        now = time.monotonic()
        if now >= stop:
            break
        n = min(chunk, max_bytes - sent)
        queued = _queued(sock)
        if queued is not None:
            elapsed = max(now - start, 1e-6)
            rate = (wire - queued) / elapsed  # delivered so far; 0 until the first acknowledgement
            room = (rate * (stop - now) if rate > 0 else PACE_MIN_BYTES) - queued  # at first, a small frame
            short = min(n, PACE_MIN_BYTES) - room
            if short > 0:  # wait about as long as the link takes to drain that much
                time.sleep(min(PACE_S, elapsed, short / rate if rate > 0 else PACE_S))
                continue
            n = min(n, int(room))
        sock.sendall(full_frame if n == chunk else _HEADER.pack(DATA, n) + payload[:n])
        sent += n
        wire += n + _HEADER.size
    return sent


def _queued(sock: socket.socket) -> int | None:
    """Bytes the kernel holds for the peer (not sent yet, or not yet acknowledged); None where it cannot
    tell (SIOCOUTQ, the same request as TIOCOUTQ, is Linux's)."""
    if fcntl is None or not hasattr(termios, "TIOCOUTQ"):
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None


# ---- frames and deadlines --------------------------------------------------------------------------------

def _send(sock: socket.socket, op: bytes, body: bytes, deadline: float) -> None:
    _arm(sock, deadline)
    sock.sendall(_HEADER.pack(op, len(body)) + body)


def _recv_header(sock: socket.socket, deadline: float) -> tuple[bytes, int]:
    return _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))


def _recv_frame(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    op, length = _recv_header(sock, deadline)
    if length > MAX_CONTROL_BYTES:
        raise ProbeFailed(f"unexpected frame {op!r} of {length} bytes")
    return op, _recv_exact(sock, length, deadline)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        _arm(sock, deadline)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProbeFailed("the connection closed in the middle of the probe")
        data += chunk
    return bytes(data)


def _expect(op: bytes, wanted: bytes) -> None:
    if op != wanted:
        raise ProbeFailed(f"expected frame {wanted!r}, got {op!r}")


def _arm(sock: socket.socket, deadline: float) -> None:
    """Give the next socket call what is left of the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProbeTimeout("the probe ran past its deadline")
    sock.settimeout(left)


@contextlib.contextmanager
def _errors(peer: str, timeout: float | None = None) -> Iterator[None]:
    """Socket errors as `ProbeFailed`/`ProbeTimeout`, naming who failed."""
    try:
        yield
    except ProbeTimeout as exc:
        raise ProbeTimeout(f"{peer} stalled: {exc}" + (f" ({timeout} s)" if timeout else "")) from None
    except ProbeFailed as exc:
        raise ProbeFailed(f"link probe with {peer} failed: {exc}") from None
    except TimeoutError:  # socket.timeout: a read or write ran into the deadline
        raise ProbeTimeout(f"{peer} stalled: the probe ran past its deadline"
                           + (f" ({timeout} s)" if timeout else "")) from None
    except OSError as exc:
        raise ProbeFailed(f"link probe with {peer} failed: connection lost: {exc}") from None


def _restore_timeout(sock: socket.socket, timeout: float | None) -> None:
    with contextlib.suppress(OSError):  # a closed socket has no timeout to restore
        sock.settimeout(timeout)
