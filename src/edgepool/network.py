"""The network model: what moving bytes between devices costs, over the cluster's links and shared media.

Training (`planners.costing`, replayed by the simulator) and inference (`inference.simulate`) both price
their transfers here, so a link or a shared medium (Wi-Fi: one capacity split among everything on it) means
the same thing to both:
- a set of transfers that run together (`transfers_time`): each pair at its link's bandwidth, all the bytes
  on a shared medium through its capacity together, plus the slowest link's latency;
- a ring all-reduce (`allreduce_link`): over the group's slowest link, its n senders splitting a shared
  medium's capacity.
"""
from __future__ import annotations

from edgepool.cluster import Cluster, Link


class LinkCache:
    """`cluster.link` memoized: routes without a direct edge cost a shortest-path search each time."""

    def __init__(self, cluster: Cluster):
        self.cluster, self._cache = cluster, {}

    def __call__(self, a: str, b: str) -> Link:
        key = (a, b) if a <= b else (b, a)
        if key not in self._cache:
            self._cache[key] = self.cluster.link(a, b)
        return self._cache[key]

    def capacity(self, link: Link) -> float | None:
        return self.cluster.medium_capacity(link.medium)


def slowest_link(devices: list[str], links: LinkCache) -> Link | None:
    """The lowest-bandwidth link among the devices (the higher latency breaks a tie)."""
    worst = None
    for i, a in enumerate(devices):
        for b in devices[i + 1:]:
            link = links(a, b)
            if worst is None or link.bandwidth < worst.bandwidth or (
                    link.bandwidth == worst.bandwidth and link.latency_s > worst.latency_s):
                worst = link
    return worst


def allreduce_link(devices: list[str], links: LinkCache) -> tuple[Link | None, str | None]:
    """The link a ring all-reduce over `devices` runs at: the slowest one, with its bandwidth capped at a
    shared medium's capacity over the n senders that share it. Returns (link, medium or None)."""
    link = slowest_link(devices, links)
    capacity = links.capacity(link) if link is not None else None
    if capacity is None:
        return link, None
    return Link(min(link.bandwidth, capacity / len(devices)), link.latency_s, link.medium), link.medium


def transfers_time(transfers: list[tuple[str, str, float]], links: LinkCache,
                   one_at_a_time: bool = True) -> tuple[float, str | None]:
    """Seconds for (sender, receiver, bytes) transfers that start together, and the medium that bounds them.

    Each pair moves at its link's bandwidth. `one_at_a_time`: an endpoint moves its pairs one after another
    (a pipeline's blocking sends); otherwise all at once (posted `isend`s on per-pair links), and the
    slowest pair bounds it. Bytes on a shared medium also go through its capacity together."""
    busy: dict[str, float] = {}  # per endpoint: seconds its pairs keep it busy
    medium_bytes: dict[str, float] = {}
    latency = 0.0
    for src, dst, nbytes in transfers:
        if nbytes <= 0:
            continue
        link = links(src, dst)
        latency = max(latency, link.latency_s)
        t = nbytes / link.bandwidth
        for end in (src, dst):
            busy[end] = busy.get(end, 0.0) + t if one_at_a_time else max(busy.get(end, 0.0), t)
        if links.capacity(link) is not None:
            medium_bytes[link.medium] = medium_bytes.get(link.medium, 0.0) + nbytes
    duration = max(busy.values()) if busy else 0.0
    medium = None
    for name, nbytes in medium_bytes.items():
        t = nbytes / links.cluster.media[name]
        if t >= duration:
            duration, medium = t, name
    if medium is None and medium_bytes:
        medium = max(medium_bytes, key=medium_bytes.get)
    return latency + duration, medium
