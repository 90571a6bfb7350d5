"""Finding the coordinator on the LAN with mDNS/DNS-SD (the `zeroconf` library), as exo and Cake do.

`pool up` announces `<pool>._edgepool._tcp.local.` with its port and the pool's name; an agent browses for that
service type and takes the first answer (or the one whose pool name it was given). Multicast does not cross
routers and some Wi-Fi networks drop it: there, `edgepool agent --join HOST:PORT` skips discovery.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

SERVICE_TYPE = "_edgepool._tcp.local."


@dataclass(frozen=True)
class Found:
    pool: str
    host: str
    port: int


class Announcement:
    """The coordinator's mDNS record, registered while the object lives (`close` withdraws it)."""

    def __init__(self, pool: str, port: int, addresses: list[str] | None = None):
        from zeroconf import ServiceInfo, Zeroconf

        self.zeroconf = Zeroconf()
        addresses = addresses or _own_addresses()
        self.info = ServiceInfo(SERVICE_TYPE, f"{pool}.{SERVICE_TYPE}", port=port,
                                addresses=[socket.inet_aton(a) for a in addresses],
                                properties={"pool": pool, "protocol": "1"}, server=f"{socket.gethostname()}.local.")
        self.zeroconf.register_service(self.info, allow_name_change=True)

    def close(self) -> None:
        try:
            self.zeroconf.unregister_service(self.info)
        finally:
            self.zeroconf.close()


def discover(pool: str | None = None, timeout_s: float = 10.0) -> Found | None:
    """The first coordinator announced on the LAN (of pool `pool` if given) within `timeout_s`, else None."""
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    found: list[Found] = []
    ready = threading.Event()
    zc = Zeroconf()

    def on_change(zeroconf, service_type, name, state_change):
        if state_change is not ServiceStateChange.Added or ready.is_set():
            return
        info = zeroconf.get_service_info(service_type, name, timeout=3000)
        if info is None or not info.parsed_addresses():
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if pool is not None and props.get("pool") != pool:
            return
        addresses = [a for a in info.parsed_addresses() if ":" not in a]
        routable = [a for a in addresses if not a.startswith("127.")] or addresses
        if not routable:
            return
        found.append(Found(props.get("pool", name), routable[0], info.port))
        ready.set()

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.1) and time.monotonic() < deadline:
            pass
    finally:
        browser.cancel()
        zc.close()
    return found[0] if found else None


def _own_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (where agents on the LAN reach the coordinator)."""
    import ifaddr

    addresses = {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)}
    return sorted(a for a in addresses if not a.startswith("127.")) or ["127.0.0.1"]
