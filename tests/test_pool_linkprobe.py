"""The link probe: sane figures on loopback, bounded in bytes and time, a clear error when the peer vanishes or
stalls, and (root) the bandwidth the testbed's tc shaping sets on a veth, at two rates."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid

import pytest

from edgepool.cluster import cluster_from_dict
from edgepool.pool import linkprobe as lp
from edgepool.pool.linkprobe import LinkMeasurement, ProbeFailed, ProbeTimeout, run_probe, serve_probe
from edgepool.testbed.netns import Network, entered, list_namespaces
from edgepool.testbed.shaping import WIRE_OVERHEAD, apply_shaping, shaping_plan


class _Peer:
    """Runs `target(sock)` in a thread; `error` keeps what it raised, for the test to inspect."""

    def __init__(self, target, sock: socket.socket):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target, sock), daemon=True)
        self.thread.start()

    def _run(self, target, sock):
        try:
            target(sock)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float = 30.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the peer thread hung"


@pytest.fixture
def tcp_pair():
    """A connected loopback TCP pair: (prober's socket, server's socket)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


def test_loopback_gives_huge_bandwidth_and_tiny_rtt_and_leaves_the_socket_usable(tcp_pair):
    client, server = tcp_pair
    client.settimeout(7.0)
    server.settimeout(None)
    peer = _Peer(serve_probe, server)
    started = time.monotonic()
    m = run_probe(client, seconds=0.5, max_bytes=4 * 2**30, pings=5)
    wall = time.monotonic() - started
    peer.join()
    assert peer.error is None
    print(f"\nloopback: {m.bandwidth_bytes_per_s / 1e6:.0f} MB/s, rtt {m.rtt_s * 1e6:.0f} us, "
          f"{m.bytes} bytes in {m.seconds:.3f} s (wall {wall:.2f} s)")
    assert m.bandwidth_bytes_per_s > 50e6  # even a loaded machine moves far more than this through loopback
    assert 0 < m.rtt_s < 0.05
    assert 0 < m.bytes <= 4 * 2**30
    assert 0.2 < m.seconds <= 0.5 + 0.5  # the window starts after the 20% warm-up, ends as the buffers drain
    assert m.bandwidth_bytes_per_s == pytest.approx(m.bytes / m.seconds)
    assert wall < 5
    assert m.to_dict() == {"bandwidth_bytes_per_s": m.bandwidth_bytes_per_s, "rtt_s": m.rtt_s,
                           "bytes": m.bytes, "seconds": m.seconds}
    # neither side closed the socket or kept the probe's timeouts: the connection carries on as before
    assert client.gettimeout() == 7.0 and server.gettimeout() is None
    client.sendall(b"after")
    assert server.recv(16) == b"after"


def test_defaults_on_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        peer = _Peer(serve_probe, b)
        m = run_probe(a)
        peer.join()
    assert peer.error is None
    assert isinstance(m, LinkMeasurement)
    assert m.bandwidth_bytes_per_s > 0 and m.rtt_s > 0 and 0 < m.bytes <= 64 * 2**20 and 0 < m.seconds < 2


def test_a_small_max_bytes_caps_the_transfer(tcp_pair):
    client, server = tcp_pair
    peer = _Peer(serve_probe, server)
    started = time.monotonic()
    m = run_probe(client, seconds=20, max_bytes=2**20)
    peer.join()
    assert peer.error is None
    assert 0 < m.bytes <= 2**20
    assert m.bytes >= 2**20 // 2  # only the warm-up (20%, or the first read) is left out
    assert m.bandwidth_bytes_per_s > 0 and m.seconds > 0
    assert time.monotonic() - started < 5, "ended by bytes, not by the 20 s"


def test_bad_arguments_are_refused_before_anything_is_sent():
    a, b = socket.socketpair()
    with a, b:
        for kwargs in ({"seconds": 0}, {"seconds": 3600}, {"max_bytes": 10}, {"pings": 0}, {"timeout": 1e6},
                       {"seconds": 2, "timeout": 1}):
            with pytest.raises(ValueError):
                run_probe(a, **kwargs)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)


# ---- peers that misbehave: fake ones, speaking the protocol through the module's own frame helpers ----------

def _answer_start_and_pings(sock: socket.socket, pings: int) -> None:
    deadline = time.monotonic() + 5
    op, _ = lp._recv_frame(sock, deadline)
    assert op == lp.START
    lp._send(sock, lp.OK, b"", deadline)
    for _ in range(pings):
        op, token = lp._recv_frame(sock, deadline)
        lp._send(sock, lp.PONG, token, deadline)


def test_a_server_that_vanishes_mid_transfer_gives_a_clear_error_not_a_hang(tcp_pair):
    client, server = tcp_pair

    def vanish(sock):
        _answer_start_and_pings(sock, pings=2)
        sock.recv(100_000)  # some of the payload, then gone
        sock.close()

    peer = _Peer(vanish, server)
    started = time.monotonic()
    with pytest.raises(ProbeFailed, match="probed agent") as caught:
        run_probe(client, seconds=3, max_bytes=2**30, pings=2, timeout=5)
    assert time.monotonic() - started < 2.5, "the error came late, not as the peer left"
    assert not isinstance(caught.value, TimeoutError), "a closed connection is not a stall"
    assert isinstance(caught.value, ConnectionError)
    peer.join()


def test_a_server_that_stops_reading_times_out_at_the_deadline():
    a, b = socket.socketpair()
    with a, b:
        peer = _Peer(lambda sock: _answer_start_and_pings(sock, pings=1), b)
        started = time.monotonic()
        with pytest.raises(ProbeTimeout, match="stalled") as caught:
            run_probe(a, seconds=1.0, max_bytes=2**30, pings=1, timeout=1.5)
        assert 1.4 < time.monotonic() - started < 3
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ConnectionError)
        peer.join()


def test_a_prober_that_vanishes_mid_transfer_ends_the_server_with_a_clear_error():
    a, b = socket.socketpair()
    with b:
        peer = _Peer(serve_probe, b)
        deadline = time.monotonic() + 5
        lp._send(a, lp.START, lp._START.pack(lp.VERSION, 1.0, 2**20, 5.0), deadline)
        assert lp._recv_frame(a, deadline)[0] == lp.OK
        a.sendall(lp._HEADER.pack(lp.DATA, 65536) + bytes(1000))  # a frame cut short
        a.close()
        peer.join(timeout=5)
    assert isinstance(peer.error, ProbeFailed) and "prober" in str(peer.error)


def test_a_prober_that_never_starts_times_the_server_out(monkeypatch):
    monkeypatch.setattr(lp, "START_WAIT_S", 0.3)
    a, b = socket.socketpair()
    with a, b:
        started = time.monotonic()
        with pytest.raises(ProbeTimeout):
            serve_probe(b)
        assert time.monotonic() - started < 2


def test_the_server_refuses_a_runaway_request():
    a, b = socket.socketpair()
    with a, b:
        peer = _Peer(serve_probe, b)
        deadline = time.monotonic() + 5
        lp._send(a, lp.START, lp._START.pack(lp.VERSION, 3600.0, 2**20, 5.0), deadline)
        op, reason = lp._recv_frame(a, deadline)
        peer.join()
    assert op == lp.ERR and b"seconds" in reason
    assert isinstance(peer.error, ProbeFailed) and "refused" in str(peer.error)


# ---- root: a real veth between two namespaces, shaped by the testbed's own tc shaping ------------------------

def _no_netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"`{'`, `'.join(missing)}` (iproute2) not installed" if missing else None


def _probe_across(network, src: str, dst: str, seconds: float) -> LinkMeasurement:
    """serve_probe inside `dst`'s namespace, run_probe inside `src`'s: payload flows src -> dst."""
    there, here = network.devices[dst], network.devices[src]
    with entered(there.namespace):
        listener = socket.create_server((there.address, 0))
    sock = None
    try:
        listener.settimeout(10)

        def serve(lsock):
            conn, _ = lsock.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the pool's channels do
                serve_probe(conn)

        peer = _Peer(serve, listener)
        with entered(here.namespace):
            sock = socket.create_connection((there.address, listener.getsockname()[1]), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        m = run_probe(sock, seconds=seconds, pings=10)
        peer.join()
        assert peer.error is None, peer.error
        return m
    finally:
        if sock is not None:
            sock.close()
        listener.close()  # an open socket would keep its namespace alive after `ip netns del`


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(_no_netns_reason() is not None, reason=f"link shaping unavailable: {_no_netns_reason()}")
def test_the_probe_measures_the_bandwidth_tc_shapes_on_a_veth():
    """Two namespaces on the testbed's bridge, the a -> b direction shaped by `testbed.shaping` (htb).

    `shaping.rate_arg` sets htb to bandwidth * WIRE_OVERHEAD (1514/1448) on the wire, so the TCP payload rate,
    which is what the probe reports, should be the cluster link's bandwidth itself: 100 Mbit/s -> 12.5e6 B/s,
    20 Mbit/s -> 2.5e6 B/s. Each must come within 10%, which also shows the probe tracks the shaping rather
    than saturating at some constant. Latency is not shaped (no netem): the RTT is veth + bridge + Python."""
    for mbit in (100, 20):
        cluster = cluster_from_dict({"name": "probe-pair",
                                     "devices": [{"name": "a", "type": "rpi5"}, {"name": "b", "type": "rpi5"}],
                                     "default_link": {"bandwidth": f"{mbit}Mbps", "latency": "0.1ms"}})
        plan = shaping_plan(cluster, ["a", "b"])
        expected = next(p.bandwidth for p in plan.pairs if (p.src, p.dst) == ("a", "b"))
        assert expected == pytest.approx(mbit * 1e6 / 8)
        run_id = f"lp{uuid.uuid4().hex[:8]}"
        network = Network(run_id, ["a", "b"])
        try:
            network.create()
            apply_shaping(network, plan)
            started = time.monotonic()
            m = _probe_across(network, "a", "b", seconds=1.5)
            wall = time.monotonic() - started
        finally:
            errors = network.destroy()
        assert errors == []
        assert not [ns for ns in list_namespaces() if run_id in ns], "a namespace of the test survived"

        ratio = m.bandwidth_bytes_per_s / expected
        print(f"\n{mbit} Mbit/s shaped (htb {expected * 8 * WIRE_OVERHEAD / 1e6:.2f} Mbit/s on the wire, "
              f"{expected:.0f} B/s payload expected): measured {m.bandwidth_bytes_per_s:.0f} B/s "
              f"({m.bandwidth_bytes_per_s * 8 / 1e6:.2f} Mbit/s, {ratio:.3f} of expected), "
              f"rtt {m.rtt_s * 1e3:.3f} ms, {m.bytes} bytes in {m.seconds:.3f} s, probe wall {wall:.2f} s")
        assert abs(ratio - 1) < 0.10, f"{mbit} Mbit/s: measured {ratio:.3f} of the shaped payload rate"
        assert 0 < m.rtt_s < 0.01
