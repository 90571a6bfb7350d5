"""An in-process pool on loopback for tests: a coordinator and agents as threads of the test process, with given
device figures (no measuring), no mDNS. The agents start real worker processes, as on real devices; besides
edgepool's workers they may start the tests' `pool_toy`."""
from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Iterator

from edgepool.device import Device
from edgepool.pool.agent import WORKER_MODULES, Agent, AgentConfig
from edgepool.pool.client import PoolClient
from edgepool.pool.coordinator import Coordinator
from edgepool.pool.launcher import PoolLauncher

TESTS = str(Path(__file__).parent)


def device(name: str, gflops: float = 10.0) -> Device:
    return Device(name=name, peak_flops={"fp32": gflops * 1e9}, memory_bytes=4 * 2**30, memory_bandwidth=5e9,
                  cpu_cores=1, measured=True)


class LocalPool:
    def __init__(self, coordinator: Coordinator, agents: dict[str, Agent], key: bytes):
        self.coordinator, self.agents, self.key = coordinator, agents, key

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    def client(self) -> PoolClient:
        return PoolClient(self.address, self.key)

    def launcher(self) -> PoolLauncher:
        return PoolLauncher(self.coordinator.agents(), self.key, self.address, name="test")


@contextlib.contextmanager
def local_pool(names=("a", "b", "c"), probe_seconds: float = 0.2, timeout_s: float = 30.0) -> Iterator[LocalPool]:
    """A pool of `names` with every link measured; the workers can import the tests' toy models."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
    key = secrets.token_bytes(32)
    coordinator = Coordinator(key, name="test", host="127.0.0.1", port=0, announce=False,
                              probe_seconds=probe_seconds).start()
    agents = {n: Agent(AgentConfig(n, key, join=("127.0.0.1", coordinator.port), host="127.0.0.1",
                                   heartbeat_s=0.2, worker_modules=WORKER_MODULES | {"pool_toy"},
                                   code_modules=frozenset({"runtime_toy"})),
                        device=device(n)) for n in names}
    for a in agents.values():
        threading.Thread(target=a.run, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout_s
        pairs = len(names) * (len(names) - 1)
        while sorted(coordinator.up()) != sorted(names) or len(coordinator.links) < pairs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool not formed: up {coordinator.up()}, links {list(coordinator.links)}")
            time.sleep(0.05)
        yield LocalPool(coordinator, agents, key)
    finally:
        for a in agents.values():
            a.close()
        coordinator.close()
