"""The edge-cloud link survives a dropped connection: the edge keeps going, and uploads resume afterwards."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from edgepool.adapt.link import CloudStats, EdgeLink, listen, serve_cloud


class Relay:
    """A TCP relay between the edge and the cloud that a test can cut (every connection closed, new ones
    refused) and restore: a dropped link, as the edge sees it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self._listener = listen("127.0.0.1", self.port)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (a bare close would not)
        listener.close()
        for a, b in self._pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._pairs.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                edge, _ = listener.accept()
            except OSError:
                return
            cloud = socket.create_connection(self.target)
            self._pairs.append((edge, cloud))
            for src, dst in ((edge, cloud), (cloud, edge)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def cloud():
    """A cloud that answers each upload with its running count of payload bytes learnt from."""
    listener = listen("127.0.0.1", 0)
    learnt: list[bytes] = []

    def handle(payload: bytes) -> bytes:
        learnt.append(payload)
        return str(sum(map(len, learnt))).encode()

    stats = CloudStats()
    thread = threading.Thread(target=serve_cloud, args=(listener, handle), kwargs={"stats": stats,
                                                                                  "idle_timeout_s": 30},
                              daemon=True)
    thread.start()
    yield listener.getsockname(), learnt, stats, thread
    listener.close()


def test_uploads_are_answered_in_order(cloud):
    address, learnt, stats, thread = cloud
    link = EdgeLink(*address, reply_timeout_s=5).start()
    for k in range(1, 4):
        seq = link.upload(b"x" * k)
        assert link.wait_reply(seq)
        assert link.newest_state() == (seq, str(sum(range(1, k + 1))).encode())
    link.close()
    thread.join(timeout=5)
    assert not thread.is_alive()  # the goodbye ended the cloud's loop
    assert learnt == [b"x", b"xx", b"xxx"]
    assert link.stats.uploads_sent == 3 and link.stats.states_received == 3
    assert link.stats.bytes_up == stats.bytes_in - 16  # the goodbye frame's header is not an upload
    assert link.stats.bytes_down == stats.bytes_out


def test_edge_keeps_going_while_the_link_is_down_and_resumes(cloud):
    address, learnt, stats, _ = cloud
    relay = Relay(address)
    link = EdgeLink("127.0.0.1", relay.port, reply_timeout_s=1.0, retry_s=0.05, max_retry_s=0.2).start()
    assert link.wait_reply(link.upload(b"a"))
    relay.cut()
    time.sleep(0.2)
    t0 = time.monotonic()
    during = [link.upload(p) for p in (b"b", b"cc")]  # queued while nothing gets through
    waited = link.wait_reply(during[-1], timeout_s=0.5)
    assert not waited and time.monotonic() - t0 < 2.0  # the edge was not held up beyond its timeout
    assert not link.healthy
    assert link.newest_state()[0] == 1  # still the last state it had
    relay.restore()
    assert link.wait_reply(during[-1], timeout_s=10)
    assert link.newest_state() == (during[-1], b"4")  # a + b + cc: each learnt once
    assert learnt == [b"a", b"b", b"cc"]
    assert link.stats.drops >= 1 and link.stats.connects >= 2
    link.close()


def test_a_full_queue_forgets_the_oldest_uploads():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = EdgeLink("127.0.0.1", port, max_pending=2, retry_s=0.05, connect_timeout_s=0.1).start()
    for p in (b"1", b"2", b"3"):
        link.upload(p)
    assert link.stats.dropped_uploads == 1
    assert not link.healthy
    link.close(flush_timeout_s=0.2)
