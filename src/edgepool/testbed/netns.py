"""Network namespaces of the testbed: one per device, all joined through a bridge in a hub namespace.

Everything lives inside namespaces this module creates: a hub namespace holding a bridge `br0`, and per
device a namespace whose interface `veth0` (address SUBNET.<rank+1>/24) is one end of a veth pair whose
other end (`d<i>`) is a port of the bridge. The root namespace and its interfaces are never touched,
and deleting the namespaces removes every veth, bridge and qdisc with them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.testbed.system import run

NAME_PREFIX = "edgepool-"
SUBNET = "10.77.0"  # a private /24 that exists only inside the testbed's namespaces
DEVICE_IFNAME = "veth0"
BRIDGE = "br0"
MAX_DEVICES = 250


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

    def namespaces(self) -> list[str]:
        return [self.hub, *(d.namespace for d in self.devices.values())]

    def create(self) -> None:
        hub = self.hub
        run(["ip", "netns", "add", hub])
        run(["ip", "-n", hub, "link", "set", "lo", "up"])
        run(["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"])
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
