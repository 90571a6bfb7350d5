"""`edgepool pool up`: the pool's one coordinator.

It admits agents that prove the pool key (and logs those that do not), keeps each member's measured device and
heartbeat, marks a member gone when its connection drops or its heartbeat is older than `heartbeat_timeout_s`
(and up again when it rejoins), measures every pair of members' link in both directions with the link probe
(one probe at a time, so probes do not share the wire), and builds from all that the live `Cluster` the
planners take (`cluster_spec`). Commands connect as clients to read that cluster and to report their job
(plan, progress, throughput, recovery events), which the dashboard shows with everything else (`state`).
"""
from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from edgepool.device import Device
from edgepool.pool.channel import Channel, ChannelClosed, Hello, accept, serve_connections

log = logging.getLogger("edgepool.pool")

DEFAULT_PORT = 29650
# A pair of members whose link is not measured yet is planned with this (and the spec says so).
ASSUMED_BANDWIDTH = "100Mbps"


@dataclass
class Member:
    name: str
    device: Device
    address: str
    agent_port: int
    accelerator: dict | None = None
    state: str = "up"
    joined: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)  # monotonic: a clock step must not evict anyone
    utilization: float | None = None
    workers: int = 0
    channel: Channel | None = field(default=None, repr=False)

    def view(self) -> dict:
        d = self.device
        return {"name": self.name, "state": self.state, "address": self.address, "agent_port": self.agent_port,
                "joined": self.joined, "heartbeat_age_s": time.monotonic() - self.last_seen,
                "measured": {"fp32_gflops": d.peak_flops["fp32"] / 1e9, "memory_gib": d.memory_bytes / 2**30,
                             "memory_bandwidth_gbs": d.memory_bandwidth / 1e9, "cpu_cores": d.cpu_cores,
                             "accelerator": _accelerator_text(self.accelerator)},
                "utilization": self.utilization, "workers": self.workers}


@dataclass
class Coordinator:
    """Membership, link probes, the live cluster and the job the dashboard shows (see the module docstring)."""

    key: bytes
    name: str = "pool"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    heartbeat_timeout_s: float = 5.0
    probe_seconds: float = 1.0
    announce: bool = True

    def __post_init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.links: dict[tuple[str, str], dict] = {}  # (from, to) -> the probe's measurement
        self.events: collections.deque = collections.deque(maxlen=500)
        self.job: dict | None = None
        self.started = time.time()
        self.stop = threading.Event()
        self._lock = threading.RLock()
        self._probe_lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Event, list]] = {}
        self._ids = itertools.count()
        self._announcement = None
        self.listener: socket.socket | None = None

    # ------------------------------------------------------------------ life
    def start(self) -> "Coordinator":
        self.listener = socket.create_server((self.host, self.port))
        self.port = self.listener.getsockname()[1]
        serve_connections(self.listener, self._serve, self.stop, "pool-connection")
        threading.Thread(target=self._monitor, daemon=True, name="pool-monitor").start()
        if self.announce:
            from edgepool.pool.discovery import Announcement
            self._announcement = Announcement(self.name, self.port)
        self.event("pool", None, f"pool {self.name!r} up on port {self.port}")
        return self

    def close(self) -> None:
        self.stop.set()
        if self._announcement is not None:
            self._announcement.close()
        if self.listener is not None:
            self.listener.close()
        for m in list(self.members.values()):
            if m.channel is not None:
                m.channel.close()

    def __enter__(self) -> "Coordinator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def event(self, kind: str, device: str | None, text: str) -> None:
        with self._lock:
            self.events.append({"time": time.time(), "kind": kind, "device": device, "text": text})
        log.info("%s", text)

    # ------------------------------------------------------------------ connections
    def _serve(self, sock: socket.socket) -> None:
        accepted = accept(sock, self.key, roles=("agent", "client"), admit=self._admit,
                          welcome={"pool": self.name}, on_refused=self._refused)
        if accepted is None:
            return
        channel, hello = accepted
        try:
            if hello.role == "agent":
                self._serve_agent(channel, hello)
            else:
                self._serve_client(channel)
        except (ChannelClosed, TimeoutError, OSError):
            pass
        finally:
            channel.close()
            if hello.role == "agent":
                self._gone(hello.name, channel, "connection closed")

    def _admit(self, hello: Hello) -> str | None:
        if hello.role != "agent":
            return None
        member = self.members.get(hello.name)
        if member is not None and member.state == "up":
            return (f"a device named {hello.name!r} is already in the pool (from {member.address}); give this "
                    "one another --name")
        try:
            Device.model_validate(hello.info.get("device"))
        except Exception as exc:  # noqa: BLE001 - any malformed description is refused the same way
            return f"its device description is not valid: {str(exc).splitlines()[0]}"
        return None

    def _refused(self, hello: Hello, reason: str) -> None:
        self.event("refused", hello.name or None, f"refused {hello.role} {hello.name!r} from {hello.address}: "
                                                  f"{reason}")

    def _serve_agent(self, channel: Channel, hello: Hello) -> None:
        device = Device.model_validate(hello.info["device"])
        with self._lock:
            rejoin = hello.name in self.members
            member = Member(hello.name, device, hello.address, int(hello.info.get("agent_port", 0)),
                            hello.info.get("accelerator"), channel=channel)
            self.members[hello.name] = member
        self.event("rejoin" if rejoin else "join", hello.name,
                   f"{hello.name} {'rejoined' if rejoin else 'joined'} from {hello.address} "
                   f"({device.peak_flops['fp32'] / 1e9:.1f} GFLOP/s fp32, {device.memory_bytes / 2**30:.1f} GiB)")
        threading.Thread(target=self._probe_new_member, args=(hello.name,), daemon=True).start()
        while not self.stop.is_set():
            message = channel.recv()
            if message["type"] == "heartbeat":
                member.last_seen = time.monotonic()
                member.utilization, member.workers = message.get("utilization"), int(message.get("workers", 0))
            elif message["type"] == "probe_result":
                pending = self._pending.get(message.get("id"))
                if pending is not None:
                    pending[1].append(message)
                    pending[0].set()

    def _gone(self, name: str, channel: Channel | None, why: str) -> None:
        with self._lock:
            member = self.members.get(name)
            if member is None or member.state != "up" or (channel is not None and member.channel is not channel):
                return  # already gone, or a newer connection of the same device
            member.state = "gone"
        if member.channel is not None:
            member.channel.close()
        self.event("leave", name, f"{name} left the pool: {why}")

    def _monitor(self) -> None:
        while not self.stop.wait(0.25):
            now = time.monotonic()
            for m in list(self.members.values()):
                if m.state == "up" and now - m.last_seen > self.heartbeat_timeout_s:
                    self._gone(m.name, m.channel, f"no heartbeat for {now - m.last_seen:.1f} s")

    # ------------------------------------------------------------------ link probes
    def _probe_new_member(self, name: str) -> None:
        for other in [m for m in self.up() if m != name]:
            for a, b in ((name, other), (other, name)):
                self.probe(a, b)

    def probe(self, a: str, b: str) -> dict | None:
        """Measure the link from member `a` to member `b` (a's agent streams to b's); None if it failed."""
        with self._probe_lock:
            ma, mb = self.members.get(a), self.members.get(b)
            if ma is None or mb is None or ma.state != "up" or mb.state != "up":
                return None
            pid = str(next(self._ids))
            done, box = threading.Event(), []
            self._pending[pid] = (done, box)
            try:
                ma.channel.send({"type": "probe", "id": pid, "peer": b, "address": mb.address,
                                 "port": mb.agent_port, "seconds": self.probe_seconds})
                if not done.wait(self.probe_seconds + 20):
                    log.warning("link probe %s -> %s got no answer", a, b)
                    return None
            except ChannelClosed:
                return None
            finally:
                self._pending.pop(pid, None)
        result = box[0]
        if "measurement" not in result:
            log.warning("link probe %s -> %s failed: %s", a, b, result.get("error"))
            return None
        measurement = {**result["measurement"], "measured_at": time.time()}
        with self._lock:
            self.links[(a, b)] = measurement
        return measurement

    # ------------------------------------------------------------------ what the commands read
    def up(self) -> list[str]:
        return [n for n, m in self.members.items() if m.state == "up"]

    def agents(self) -> dict[str, dict]:
        return {n: {"address": m.address, "port": m.agent_port} for n, m in self.members.items() if m.state == "up"}

    def cluster_spec(self) -> dict:
        """The live cluster as a cluster spec (`cluster_from_dict` and `pool export` take it): the members'
        measured devices, and per pair the slower direction's measured bandwidth and half the round trip."""
        with self._lock:
            names = self.up()
            devices = [{"name": n, "address": self.members[n].address,
                        "spec": self.members[n].device.model_dump(mode="json", exclude={"name"})} for n in names]
            links, assumed = [], []
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    both = [self.links[p] for p in ((a, b), (b, a)) if p in self.links]
                    if not both:
                        assumed.append(f"{a}-{b}")
                        continue
                    bandwidth = min(m["bandwidth_bytes_per_s"] for m in both)
                    latency = min(m["rtt_s"] for m in both) / 2
                    links.append({"between": [a, b], "bandwidth": f"{bandwidth / 1e6:.4f}MB/s",
                                  "latency": f"{latency * 1e3:.4f}ms"})
        spec = {"name": self.name,
                "description": f"live pool {self.name!r}: devices measured by their agents, links by the "
                               "coordinator's probe",
                "sources": {"devices": "measured on each device by `edgepool agent` (local_device)",
                            "links": "measured: TCP goodput of the slower direction, latency = half the smallest "
                                     "round trip (edgepool.pool.linkprobe)"},
                "devices": devices, "links": links}
        if assumed:
            spec["default_link"] = {"bandwidth": ASSUMED_BANDWIDTH}
            spec["sources"]["assumed"] = (f"not measured yet, assumed 100 Mbit/s: {', '.join(assumed)}")
        return spec

    def state(self) -> dict:
        """Everything the dashboard shows, as plain JSON."""
        now = time.time()
        with self._lock:
            links = [{"a": a, "b": b, "bandwidth_mbit_s": m["bandwidth_bytes_per_s"] * 8 / 1e6,
                      "rtt_ms": m["rtt_s"] * 1e3, "measured_at": m["measured_at"]} for (a, b), m in self.links.items()
                     if a in self.members and b in self.members]
            host = socket.gethostname() if self.host in ("0.0.0.0", "", "::") else self.host
            return {"pool": {"name": self.name, "coordinator": f"{host}:{self.port}", "started": self.started,
                             "now": now},
                    "devices": [m.view() for m in self.members.values()],
                    "links": links, "job": self.job, "events": list(self.events)}

    def _serve_client(self, channel: Channel) -> None:
        """A command: requests answered in order ("cluster", "state"), job reports taken as they come."""
        while not self.stop.is_set():
            message = channel.recv()
            kind = message["type"]
            if kind == "cluster":
                channel.send({"type": "cluster", "spec": self.cluster_spec(), "agents": self.agents()})
            elif kind == "state":
                channel.send({"type": "state", "state": self.state()})
            elif kind == "job":
                with self._lock:
                    self.job = {**(self.job or {}), **message["job"]} if message.get("update") else message["job"]
            elif kind == "event":
                self.event(str(message.get("kind", "job")), message.get("device"), str(message.get("text", "")))
            else:
                channel.send({"type": "error", "reason": f"unknown request {kind!r}"})


def _accelerator_text(accelerator: dict | None) -> str | None:
    if not accelerator:
        return None
    memory = accelerator.get("memory_bytes")
    return f"{accelerator.get('name') or accelerator.get('kind')}" + (f", {memory / 2**30:.0f} GiB" if memory else "")
