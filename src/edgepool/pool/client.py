"""What a command uses to talk to the pool's coordinator: the live cluster, the agents' addresses, the state the
dashboard shows, and reports of the command's own job."""
from __future__ import annotations

import os
import socket
import threading

from edgepool.cluster import Cluster, cluster_from_dict
from edgepool.errors import SpecError
from edgepool.pool.channel import Channel, ChannelClosed, connect
from edgepool.pool.coordinator import DEFAULT_PORT


def parse_address(text: str, field: str = "--pool", default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """HOST[:PORT] -> (host, port)."""
    host, sep, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    if not sep:
        host, port = text.strip(), str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(field=field, value=text, accepted=f"HOST[:PORT] of the pool's coordinator, e.g. "
                                                          f"192.168.1.10:{default_port}")
    return host, int(port)


class PoolClient:
    """An authenticated connection to the coordinator (role "client"); requests are answered in order."""

    def __init__(self, address: str, key: bytes, name: str | None = None, timeout_s: float = 10.0):
        self.host, self.port = parse_address(address)
        self.address = f"{self.host}:{self.port}"
        self.key = key
        name = name or f"{socket.gethostname()}:{os.getpid()}"
        try:
            self.channel: Channel = connect(self.host, self.port, key, "client", name, timeout_s=timeout_s)[0]
        except (ConnectionRefusedError, socket.timeout, socket.gaierror, TimeoutError) as exc:
            raise SpecError(field="--pool", value=address, accepted="the address of a running `edgepool pool up`",
                            hint=f"cannot reach it: {exc}") from None
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def _request(self, message: dict) -> dict:
        with self._lock:
            self.channel.send(message)
            reply = self.channel.recv(self.timeout_s)
        if reply["type"] == "error":
            raise RuntimeError(f"the coordinator answered: {reply.get('reason')}")
        return reply

    def cluster_spec(self) -> tuple[dict, dict[str, dict]]:
        """(the live cluster as a spec, {device: {"address", "port"}} of the agents)."""
        reply = self._request({"type": "cluster"})
        return reply["spec"], reply["agents"]

    def load(self, spec: dict) -> Cluster:
        """The cluster a spec from `cluster_spec` describes (at least one device)."""
        if not spec["devices"]:
            raise SpecError(field="--pool", value=self.address, accepted="a pool with at least one device",
                            hint="no agent has joined yet: run `edgepool agent` on each device")
        return cluster_from_dict(spec, source=f"pool {self.address}")

    def live(self) -> tuple[Cluster, dict[str, dict]]:
        """The live cluster (the devices up now) and its agents' addresses, from one answer."""
        spec, agents = self.cluster_spec()
        return self.load(spec), agents

    def cluster(self) -> Cluster:
        return self.live()[0]

    def state(self) -> dict:
        return self._request({"type": "state"})["state"]

    def report_job(self, job: dict, update: bool = False) -> None:
        """Tell the dashboard about this command's job (`update`: merge into what it has)."""
        try:
            self.channel.send({"type": "job", "job": job, "update": update})
        except ChannelClosed:
            pass

    def report_event(self, kind: str, device: str | None, text: str) -> None:
        try:
            self.channel.send({"type": "event", "kind": kind, "device": device, "text": text})
        except ChannelClosed:
            pass

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "PoolClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
