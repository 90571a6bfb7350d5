"""Which network interface gloo binds to on a real host: the one that routes to the rendezvous (MASTER_ADDR).

Without GLOO_SOCKET_IFNAME gloo binds to the address the host name resolves to. Debian and Ubuntu map the
host name to 127.0.1.1 (containers often to 127.0.0.1), so on two real hosts each worker advertised a loopback
address and its peer was refused. The local and testbed launchers set GLOO_SOCKET_IFNAME themselves; a worker
started by `torchrun` on a real host finds the interface here. A GLOO_SOCKET_IFNAME the user sets wins.
"""
from __future__ import annotations

import os
import socket
from typing import MutableMapping

import psutil

ENV = "GLOO_SOCKET_IFNAME"


def interface_towards(host: str) -> str | None:
    """The local interface whose address the kernel picks to reach `host` (a UDP connect sends no packet);
    None when `host` does not resolve or no route leads to it."""
    try:
        candidates = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    interfaces = psutil.net_if_addrs()
    for family, kind, proto, _, address in candidates:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.connect(address)
                local = probe.getsockname()[0]
        except OSError:
            continue
        for name, addresses in interfaces.items():
            if any(a.family == family and a.address.split("%")[0] == local for a in addresses):
                return name
    return None


def choose_gloo_interface(env: MutableMapping[str, str] | None = None) -> tuple[str | None, str]:
    """Set GLOO_SOCKET_IFNAME in `env` (default: this process's environment) to the interface that routes to
    MASTER_ADDR, unless it is set already. Returns (interface, how it was chosen) for the log."""
    env = os.environ if env is None else env
    if env.get(ENV):
        return env[ENV], f"{ENV}={env[ENV]} (set by the user or the launcher)"
    master = env.get("MASTER_ADDR")
    if not master:
        return None, "MASTER_ADDR is not set; gloo picks the interface from the host name"
    name = interface_towards(master)
    if name is None:
        return None, f"no interface routes to MASTER_ADDR={master}; gloo picks the interface from the host name"
    env[ENV] = name
    return name, f"{ENV}={name}: the interface that routes to MASTER_ADDR={master}"
