"""Link bandwidth of the testbed with `tc`: per-pair rates with htb, shared media through ifb devices.

- Per pair: the sender's `veth0` egress gets an htb qdisc with one class per destination, its rate the
  cluster link's bandwidth, selected by a u32 filter on the destination address. Both directions of a
  link are shaped independently (full duplex), as the cost model assumes.
- Shared medium (e.g. one Wi-Fi network): traffic of every pair on the medium is redirected, at the hub's
  bridge port where it enters, through one ifb device per medium whose htb class has the medium's capacity,
  so all transfers on the medium share it.
- Latency is NOT emulated: this kernel has no `netem`, and neither htb nor tbf can delay packets. The
  testbed reports the spec's latencies as not emulated; compare a simulation against it with latency set to
  the real value of the testbed (about 0.05 ms per hop on veth), not the spec's.

Rates are raised by `WIRE_OVERHEAD` so that TCP payload throughput (what a cluster spec's bandwidth means)
matches the link bandwidth: htb counts whole Ethernet frames (1514 bytes carry 1448 bytes of TCP payload).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.cluster import Cluster
from edgepool.testbed.netns import Network
from edgepool.testbed.system import run

WIRE_OVERHEAD = 1514 / 1448


@dataclass(frozen=True)
class PairShape:
    """Shaped bandwidth (payload bytes/s) from `src` to `dst`; `medium` names a shared network, if any."""

    src: str
    dst: str
    bandwidth: float
    latency_s: float = 0.0
    medium: str | None = None


@dataclass
class ShapingPlan:
    pairs: list[PairShape]
    media: dict[str, float] = field(default_factory=dict)  # medium -> capacity, payload bytes/s

    @property
    def latency_emulated(self) -> bool:
        return False

    def describe(self) -> dict:
        return {
            "pairs": [{"src": p.src, "dst": p.dst, "bandwidth_bytes_per_s": p.bandwidth, "medium": p.medium,
                       "spec_latency_s": p.latency_s} for p in self.pairs],
            "media": dict(self.media),
            "latency": "not emulated (no netem on this kernel); spec latencies are listed, not applied",
        }


def shaping_plan(cluster: Cluster, names: list[str], bandwidth_scale: float = 1.0) -> ShapingPlan:
    """Per ordered pair of `names`, the bandwidth to shape (cluster link times `bandwidth_scale`)."""
    pairs, media = [], {}
    for src in names:
        for dst in names:
            if src == dst:
                continue
            link = cluster.link(src, dst)
            medium = link.medium if cluster.medium_capacity(link.medium) else None
            pairs.append(PairShape(src, dst, link.bandwidth * bandwidth_scale, link.latency_s, medium))
            if medium:
                media[medium] = cluster.medium_capacity(medium) * bandwidth_scale
    return ShapingPlan(pairs=pairs, media=media)


def rate_arg(bytes_per_s: float) -> str:
    return f"{max(8, int(bytes_per_s * 8 * WIRE_OVERHEAD))}bit"


def _quantum(bytes_per_s: float) -> str:
    """htb's quantum (bytes a class may send per round): rate/10 by default, kept in 1514..200000."""
    return str(int(min(200_000, max(1514, bytes_per_s * WIRE_OVERHEAD / 10))))


def _htb_root(ns: str, dev: str, default: int = 0) -> None:
    # default 0: traffic no filter matches (ARP, unlisted pairs) bypasses shaping.
    run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", f"{default:x}"])


def _htb_class(ns: str, dev: str, minor: int, bandwidth: float) -> str:
    classid = f"1:{minor:x}"
    rate = rate_arg(bandwidth)
    run(["tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", classid, "htb",
         "rate", rate, "ceil", rate, "quantum", _quantum(bandwidth)])
    return classid


def apply_shaping(network: Network, plan: ShapingPlan) -> None:
    """Install the qdiscs, classes and filters of `plan` in the network's namespaces."""
    by_src: dict[str, list[PairShape]] = {}
    for pair in plan.pairs:
        by_src.setdefault(pair.src, []).append(pair)
    for src, pairs in by_src.items():
        dev = network.devices[src]
        _htb_root(dev.namespace, dev.ifname)
        for k, pair in enumerate(pairs):
            classid = _htb_class(dev.namespace, dev.ifname, 0x10 + k, pair.bandwidth)
            dst = network.devices[pair.dst].address
            run(["tc", "-n", dev.namespace, "filter", "add", "dev", dev.ifname, "parent", "1:", "protocol", "ip",
                 "prio", "1", "u32", "match", "ip", "dst", f"{dst}/32", "flowid", classid])

    hub = network.hub
    ifb_of = {medium: f"m{k}" for k, medium in enumerate(sorted(plan.media))}
    for medium, ifb in ifb_of.items():
        run(["ip", "-n", hub, "link", "add", ifb, "type", "ifb"])
        run(["ip", "-n", hub, "link", "set", ifb, "txqueuelen", "1000", "up"])
        _htb_root(hub, ifb, default=1)  # everything redirected here shares the medium's one class
        _htb_class(hub, ifb, 1, plan.media[medium])
    with_ingress: set[str] = set()
    for pair in plan.pairs:
        if pair.medium is None:
            continue
        port = network.devices[pair.src].hub_port
        if port not in with_ingress:
            run(["tc", "-n", hub, "qdisc", "add", "dev", port, "handle", "ffff:", "ingress"])
            with_ingress.add(port)
        dst = network.devices[pair.dst].address
        run(["tc", "-n", hub, "filter", "add", "dev", port, "parent", "ffff:", "protocol", "ip", "prio", "1",
             "u32", "match", "ip", "dst", f"{dst}/32",
             "action", "mirred", "egress", "redirect", "dev", ifb_of[pair.medium]])


def pace_per_packet(tb) -> None:
    """Make htb pace MTU-sized packets: without this the veths hand it GSO bursts of up to 64 KB that it
    charges only after sending, so at 1 Mbit/s single images came out +-35% (527/805/1084 ms for 100 KB,
    right on average); with one segment per packet each took 804 ms."""
    for name in tb.devices:
        run(["ip", "-n", tb.namespace(name), "link", "set", "dev", tb.ifname(name), "gso_max_segs", "1"])
