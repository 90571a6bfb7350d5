"""Network namespaces of the testbed: one per device, all joined through a bridge in a hub namespace.

Everything lives inside namespaces this module creates: a hub namespace holding a bridge `br0`, and per
device a namespace whose interface `veth0` (address SUBNET.<rank+1>/24) is one end of a veth pair whose
other end (`d<i>`) is a port of the bridge. The bridge itself has the address SUBNET.254 (`hub_address`): a
process of the host that opens a listening socket inside the hub namespace (`entered(network.hub)`), such as
the TCPStore of an elastic run's supervisor, is reachable from every device there. The root namespace and its
interfaces are never touched, and deleting the namespaces removes every veth, bridge and qdisc with them.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass, field
from typing import Iterator

from edgepool.testbed.system import run

NAME_PREFIX = "edgepool-"
SUBNET = "10.77.0"  # a private /24 that exists only inside the testbed's namespaces
DEVICE_IFNAME = "veth0"
BRIDGE = "br0"
MAX_DEVICES = 250
HUB_HOST = 254  # the bridge's own address in the subnet, above every device's
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"  # where `ip netns add` pins named namespaces


@dataclass
class DeviceNet:
    """Where one device lives on the emulated network."""

    device: str
    index: int
    namespace: str
    address: str
    ifname: str = DEVICE_IFNAME

    @property
    def hub_port(self) -> str:
        """Name of the bridge-side end of this device's veth pair, inside the hub namespace."""
        return f"d{self.index}"


@dataclass
class Network:
    run_id: str
    device_names: list[str]
    subnet: str = SUBNET
    devices: dict[str, DeviceNet] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.device_names) > MAX_DEVICES:
            raise ValueError(f"the testbed network holds at most {MAX_DEVICES} devices, "
                             f"got {len(self.device_names)}")
        self.devices = {name: DeviceNet(device=name, index=i, namespace=f"{NAME_PREFIX}{self.run_id}-{i}",
                                        address=f"{self.subnet}.{i + 1}")
                        for i, name in enumerate(self.device_names)}

    @property
    def hub(self) -> str:
        return f"{NAME_PREFIX}{self.run_id}-hub"

    @property
    def hub_address(self) -> str:
        """The bridge's address: services hosted in the hub namespace listen here."""
        return f"{self.subnet}.{HUB_HOST}"

    def namespaces(self) -> list[str]:
        return [self.hub, *(d.namespace for d in self.devices.values())]

    def create(self) -> None:
        hub = self.hub
        run(["ip", "netns", "add", hub])
        run(["ip", "-n", hub, "link", "set", "lo", "up"])
        run(["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", hub, "addr", "add", f"{self.hub_address}/24", "dev", BRIDGE])
        run(["ip", "-n", hub, "link", "set", BRIDGE, "up"])
        for dev in self.devices.values():
            ns = dev.namespace
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", hub, "link", "add", dev.hub_port, "type", "veth",
                 "peer", "name", dev.ifname, "netns", ns])
            run(["ip", "-n", hub, "link", "set", dev.hub_port, "master", BRIDGE, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{dev.address}/24", "dev", dev.ifname])
            run(["ip", "-n", ns, "link", "set", dev.ifname, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def destroy(self) -> list[str]:
        """Delete every namespace of this network (veths, bridge and qdiscs go with them)."""
        errors = []
        existing = set(list_namespaces(f"{NAME_PREFIX}{self.run_id}-"))
        for ns in self.namespaces():
            if ns in existing:
                proc = run(["ip", "netns", "del", ns], check=False)
                if proc.returncode != 0:
                    errors.append(f"could not delete namespace {ns}: {proc.stderr.strip()}")
        return errors


def list_namespaces(prefix: str = NAME_PREFIX) -> list[str]:
    proc = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(prefix)]


def delete_namespace(name: str) -> None:
    run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Run the calling thread inside network namespace `namespace`, then return it to where it was.

    Sockets opened meanwhile stay in `namespace` for their whole life (and threads started meanwhile run
    there), so a listening socket opened here serves that namespace's network. Needs root (CAP_SYS_ADMIN).
    Keep such sockets closed before the namespace is deleted: an open one keeps the namespace alive."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(os.path.join(NETNS_DIR, namespace)) as target, open("/proc/thread-self/ns/net") as home:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {namespace}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:  # never go on in the wrong namespace
                err = ctypes.get_errno()
                raise OSError(err, f"cannot return from network namespace {namespace}: {os.strerror(err)}")
