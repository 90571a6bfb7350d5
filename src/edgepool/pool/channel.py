"""Messages between the coordinator, the agents and the commands: length-prefixed JSON over TCP, after an
authenticated handshake.

Every connection starts the same way: the side that accepted sends a challenge (its nonce); the side that
connected answers with its role ("agent", "client" or "probe"), its name, its own nonce and its proof of the
pool key (`key.proof`); the acceptor checks it and either refuses (one line saying why, then it closes and
logs the attempt) or welcomes with its own proof, which the connecting side checks in turn. A message is a
4-byte big-endian length and that many bytes of UTF-8 JSON.
"""
from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from dataclasses import dataclass

from edgepool.pool import key as pool_key

MAX_MESSAGE_BYTES = 1 << 30  # a synced file (a stage's state) may be large; anything bigger is a broken peer
HANDSHAKE_TIMEOUT_S = 10.0
ROLES = ("agent", "client", "probe")

log = logging.getLogger("edgepool.pool")


class ChannelClosed(ConnectionError):
    """The other end went away (or sent something that is not a message)."""


class Refused(ConnectionError):
    """The other end refused the handshake: a wrong or missing pool key, or a name already taken."""


class Channel:
    """One TCP connection carrying JSON messages; `send` may be called from several threads."""

    def __init__(self, sock: socket.socket, peer_name: str = ""):
        self.sock, self.peer_name = sock, peer_name
        self._send_lock = threading.Lock()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def peer_address(self) -> str:
        return self.sock.getpeername()[0]

    @property
    def local_address(self) -> str:
        return self.sock.getsockname()[0]

    def send(self, message: dict) -> None:
        data = json.dumps(message).encode()
        with self._send_lock:
            try:
                self.sock.sendall(struct.pack(">I", len(data)) + data)
            except OSError as exc:
                raise ChannelClosed(f"connection to {self.peer_name or 'peer'} lost: {exc}") from None

    def recv(self, timeout: float | None = None) -> dict:
        """The next message; `timeout` None waits for ever. Raises ChannelClosed or TimeoutError."""
        self.sock.settimeout(timeout)
        try:
            (size,) = struct.unpack(">I", self._exactly(4))
            if size > MAX_MESSAGE_BYTES:
                raise ChannelClosed(f"{self.peer_name or 'peer'} sent a message of {size} bytes")
            message = json.loads(self._exactly(size))
        except socket.timeout:
            raise TimeoutError(f"no message from {self.peer_name or 'peer'} within {timeout} s") from None
        except (OSError, ValueError) as exc:
            raise ChannelClosed(f"connection to {self.peer_name or 'peer'} lost: {exc}") from None
        if not isinstance(message, dict) or "type" not in message:
            raise ChannelClosed(f"{self.peer_name or 'peer'} sent something that is not a message")
        return message

    def _exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ChannelClosed(f"{self.peer_name or 'peer'} closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass(frozen=True)
class Hello:
    """Who connected, as its handshake said."""

    role: str
    name: str
    address: str  # as the acceptor sees it
    info: dict


def connect(host: str, port: int, key: bytes, role: str, name: str, info: dict | None = None,
            timeout_s: float = HANDSHAKE_TIMEOUT_S) -> tuple[Channel, dict]:
    """Connect, prove the key, check the other side's proof: (channel, the acceptor's welcome message)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    channel = Channel(sock, f"{host}:{port}")
    try:
        challenge = channel.recv(timeout_s)
        if challenge.get("type") != "challenge":
            raise ChannelClosed(f"{host}:{port} is not an edgepool pool endpoint")
        mine = pool_key.nonce()
        channel.send({"type": "hello", "role": role, "name": name, "nonce": mine, "info": info or {},
                      "proof": pool_key.proof(key, role, mine, challenge["nonce"])})
        answer = channel.recv(timeout_s)
        if answer.get("type") == "refused":
            raise Refused(f"{host}:{port} refused to let {role} {name!r} in: {answer.get('reason')}")
        if answer.get("type") != "welcome" or not pool_key.verify(key, "acceptor", mine, challenge["nonce"],
                                                                   answer.get("proof", "")):
            raise Refused(f"{host}:{port} could not prove it holds the pool key (a different pool, or an "
                          "impostor); not joining it")
    except BaseException:
        channel.close()
        raise
    return channel, answer


def accept(sock: socket.socket, key: bytes, roles: tuple[str, ...] = ROLES,
           admit=None, welcome: dict | None = None, on_refused=None,
           timeout_s: float = HANDSHAKE_TIMEOUT_S) -> tuple[Channel, Hello] | None:
    """The acceptor's side of the handshake on a freshly accepted socket.

    `admit(hello) -> str | None` may refuse a peer that proved the key (the reason, e.g. a duplicate name).
    Returns None, after answering and logging (and calling `on_refused(hello, reason)`), when the peer is
    refused or breaks off."""
    address = sock.getpeername()[0]
    channel = Channel(sock, address)
    try:
        mine = pool_key.nonce()
        channel.send({"type": "challenge", "nonce": mine})
        hello = channel.recv(timeout_s)
        role, name = hello.get("role"), str(hello.get("name", ""))[:100]
        reason = None
        if hello.get("type") != "hello" or role not in roles:
            reason = f"role {role!r} is not accepted here (accepted: {', '.join(roles)})"
        elif not pool_key.verify(key, role, mine, str(hello.get("nonce", "")), hello.get("proof", "")):
            reason = "wrong pool key (pass the key `edgepool pool up` created, with --key or --key-file)"
        elif admit is not None:
            reason = admit(Hello(role, name, address, hello.get("info") or {}))
        if reason:
            log.warning("refused %s %r from %s: %s", role, name, address, reason)
            if on_refused is not None:
                on_refused(Hello(str(role), name, address, {}), reason)
            channel.send({"type": "refused", "reason": reason})
            channel.close()
            return None
        channel.send({"type": "welcome", **(welcome or {}),
                      "proof": pool_key.proof(key, "acceptor", mine, str(hello["nonce"]))})
    except (ChannelClosed, TimeoutError, OSError) as exc:
        log.warning("handshake with %s broke off: %s", address, exc)
        channel.close()
        return None
    channel.peer_name = f"{role} {name}"
    return channel, Hello(role, name, address, hello.get("info") or {})


def serve_connections(listener: socket.socket, handle, stop: threading.Event, name: str) -> threading.Thread:
    """Accept on `listener` until it is closed or `stop` is set; `handle(sock)` runs in a thread per connection."""
    def loop() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(sock,), daemon=True, name=name).start()

    thread = threading.Thread(target=loop, daemon=True, name=f"{name}-accept")
    thread.start()
    return thread
