"""`Testbed`: a cluster spec emulated on this Linux host, one worker process per device.

Per device: a cgroup v1 pair with a CPU quota proportional to the device's speed and a memory limit equal to
its memory, and a network namespace on a private bridge with the cluster's link bandwidths shaped by `tc`
(see `shaping` for what is and is not emulated: latency is not). Needs root; `make_launcher` falls back to
the local launcher otherwise. Everything is torn down on exit, an exception, SIGINT/SIGTERM and a crashed
worker; leftovers of runs whose owner process died (e.g. by SIGKILL) are removed by the next testbed.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from edgepool.cluster import Cluster, Link
from edgepool.costmodel import device_speed
from edgepool.device import Device
from edgepool.testbed.cgroups import DeviceCgroup, list_cgroups, remove_cgroup_dirs
from edgepool.testbed.launcher import ProcessLauncher, WorkerHandle
from edgepool.testbed.netns import NAME_PREFIX, Network, delete_namespace, entered, list_namespaces
from edgepool.testbed.shaping import ShapingPlan, apply_shaping, shaping_plan
from edgepool.testbed.system import process_start_time, require_testbed
from edgepool.testbed.worker import QUOTA_FD_ENV, QUOTA_US_ENV

log = logging.getLogger("edgepool.testbed")

STATE_DIR = Path("/run/edgepool-testbed")  # one file per live run: its owner, to tell leftovers apart
RUN_ID_PREFIX = "tb"
DEFAULT_MASTER_PORT = 29500
QUOTA_FD = 3  # deferred quota: the worker inherits this fd onto its cpu.cfs_quota_us


# ----------------------------------------------------------------------------- limits (pure, no root)
@dataclass(frozen=True)
class DeviceLimits:
    cpu_cores: float
    memory_bytes: int | None
    relative_speed: float


def device_limits(cluster: Cluster, names: Sequence[str], cpu_budget: float | None = None,
                  max_cores_per_device: float = 1.0, min_cores: float = 0.02,
                  memory_scale: float | None = 1.0) -> dict[str, DeviceLimits]:
    """CPU quota and memory limit per device.

    The fastest device gets `max_cores_per_device` cores (1: workers run one thread), the others the same
    fraction of it as their speed is of the fastest one's; if the quotas add up to more than `cpu_budget`
    (default: this host's cores) all are scaled down together, so the ratios stay those of the devices.
    `min_cores` keeps very slow devices runnable (the kernel's floor is 0.01). The memory limit is the
    device's memory times `memory_scale` (None: no memory limit).
    """
    if not names:
        raise ValueError("the testbed needs at least one device")
    budget = float(cpu_budget if cpu_budget is not None else os.cpu_count() or 1)
    speeds = {n: device_speed(cluster, n) for n in names}
    fastest = max(speeds.values())
    cores = {n: s / fastest * max_cores_per_device for n, s in speeds.items()}
    total = sum(cores.values())
    scale = min(1.0, budget / total)
    limits = {}
    for n in names:
        memory = None if memory_scale is None else int(cluster.devices[n].memory_bytes * memory_scale)
        limits[n] = DeviceLimits(cpu_cores=max(min_cores, cores[n] * scale), memory_bytes=memory,
                                 relative_speed=speeds[n] / fastest)
    return limits


def host_core_device(name: str = "host-core") -> Device:
    """One core of this host as a `Device`, measured with one torch thread (matmul FLOP/s, copy bandwidth):
    what a testbed worker runs on, and what every emulated device is a fraction of."""
    from edgepool.local_device import (measure_local_device, measure_matmul_flops, measure_memory_bandwidth,
                                       torch_threads)

    with torch_threads(1):
        fp32 = measure_matmul_flops(512)
        bandwidth = measure_memory_bandwidth(32 * 2**20)
    host = measure_local_device()
    return host.model_copy(update={"name": name, "peak_flops": {"fp32": fp32}, "cpu_cores": 1,
                                   "memory_bandwidth": bandwidth, "description": f"one core of {host.description}",
                                   "sources": {**host.sources, "peak_flops": "measured: best of 5 fp32 512x512 "
                                               "torch.mm on one thread", "memory": "measured: psutil total "
                                               "memory; bandwidth from a 32 MiB tensor copy on one thread"}})


@dataclass(frozen=True)
class Emulation:
    """How a launcher runs a cluster on this host: each device's share of one host core, what the spec's links
    become, and each device's memory limit (none: the device's own memory)."""

    cores: dict[str, float]  # device -> cores; the emulated cluster has these devices, in this order
    bandwidth_scale: float = 1.0  # links shaped at this fraction of the spec (inf: not shaped)
    latency_s: float = 0.0  # every link's real latency: the testbed adds none (veth: about 0.05 ms)
    loopback_bandwidth: float | None = None  # unshaped local processes: every link is loopback, no medium
    memory: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def of_limits(cls, limits: dict[str, DeviceLimits], bandwidth_scale: float = 1.0,
                  latency_s: float = 0.0) -> "Emulation":
        """A testbed's emulation: its CPU quotas and memory limits, its shaped links."""
        return cls(cores={n: lim.cpu_cores for n, lim in limits.items()}, bandwidth_scale=bandwidth_scale,
                   latency_s=latency_s, memory={n: lim.memory_bytes for n, lim in limits.items()})

    def link(self, link: Link) -> Link:
        if self.loopback_bandwidth is not None:
            return Link(bandwidth=self.loopback_bandwidth, latency_s=self.latency_s, medium=None)
        return replace(link, bandwidth=link.bandwidth * self.bandwidth_scale, latency_s=self.latency_s)

    def media(self, cluster: Cluster) -> dict[str, float]:
        if self.loopback_bandwidth is not None:
            return {}
        return {m: c * self.bandwidth_scale for m, c in cluster.media.items()}


def emulated_cluster(cluster: Cluster, emulation: Emulation, host: Device) -> Cluster:
    """The cluster as it really runs here, so that a simulation predicts what a run here measures.

    Each device becomes `host` (one core of this machine) scaled by its cores (compute, and memory bandwidth
    up to one core's: a worker runs one thread), with its memory limit; links become what the launcher makes
    of them (`Emulation.link`). Energy figures stay those of the original devices (modelled either way).
    """
    devices = {}
    for name, cores in emulation.cores.items():
        original = cluster.devices[name]
        devices[name] = original.model_copy(update={
            "kind": "cpu", "peak_flops": {"fp32": host.peak("fp32") * cores},
            "memory_bandwidth": host.memory_bandwidth * min(cores, 1.0), "efficiency": host.efficiency,
            "cpu_cores": 1, "memory_bytes": emulation.memory.get(name) or original.memory_bytes,
            "power_modes": [], "description": f"{name} emulated: {cores:.3f} of one core of this host",
            "sources": {**original.sources, "emulated": "compute = one measured host core x its CPU share"}})
    graph = cluster.graph.subgraph(list(devices)).copy()
    for _, _, data in graph.edges(data=True):
        data["link"] = emulation.link(data["link"])
    keep = lambda values: {n: v for n, v in values.items() if n in devices}  # noqa: E731
    return replace(cluster, name=f"{cluster.name} (emulated here)", devices=devices, graph=graph,
                   media=emulation.media(cluster), locations=keep(cluster.locations),
                   addresses=keep(cluster.addresses), power_modes={}, zones=keep(cluster.zones))


# ----------------------------------------------------------------------------- the testbed
class Testbed(ProcessLauncher):
    """Emulates `cluster` (or the `devices` subset of it) on this host; a `Launcher`.

    with Testbed(cluster) as tb:
        tb.launch({name: ["python", "worker.py"] for name in tb.devices})
        tb.wait()
    """

    kind = "testbed"
    __test__ = False

    def __init__(self, cluster: Cluster, devices: Sequence[str] | None = None, *,
                 cpu_budget: float | None = None, max_cores_per_device: float = 1.0, min_cores: float = 0.02,
                 memory_scale: float | None = 1.0, bandwidth_scale: float = 1.0, shape_links: bool = True,
                 cpu_quota_at_start: bool = True, master_port: int = DEFAULT_MASTER_PORT,
                 run_id: str | None = None) -> None:
        super().__init__()
        names = list(devices) if devices is not None else list(cluster.devices)
        unknown = [n for n in names if n not in cluster.devices]
        if unknown:
            from edgepool.errors import SpecError
            raise SpecError(field="devices", value=unknown, accepted=", ".join(cluster.devices))
        self.cluster = cluster
        self.devices = names
        self.run_id = run_id or f"{RUN_ID_PREFIX}{secrets.token_hex(4)}"
        self.limits = device_limits(cluster, names, cpu_budget, max_cores_per_device, min_cores, memory_scale)
        self.shaping: ShapingPlan | None = shaping_plan(cluster, names, bandwidth_scale) if shape_links else None
        self.network = Network(self.run_id, names)
        self.cgroups = {n: DeviceCgroup(f"{NAME_PREFIX}{self.run_id}-{i}", self.limits[n].cpu_cores,
                                        self.limits[n].memory_bytes) for i, n in enumerate(names)}
        self.cpu_quota_at_start = cpu_quota_at_start
        self.bandwidth_scale = bandwidth_scale
        self.base_port = master_port
        self.teardown_errors: list[str] = []
        self.removed_leftovers: list[str] = []
        self._started = False

    # -- where things are
    def address(self, device: str) -> str:
        return self.network.devices[device].address

    def ifname(self, device: str) -> str:
        return self.network.devices[device].ifname

    def namespace(self, device: str) -> str:
        return self.network.devices[device].namespace

    def coordinator_address(self) -> str:
        return self.network.hub_address

    def coordinator_namespace(self):
        """The hub namespace: a socket opened inside is reachable from every device at `coordinator_address`."""
        if not self._started:
            raise RuntimeError("start the testbed first (`with Testbed(cluster) as tb:` or tb.start())")
        return entered(self.network.hub)

    def _master_port(self) -> int:
        # every namespace has its own ports; a new port per launch avoids sockets in TIME_WAIT
        return self.base_port + self._launches - 1

    def emulated_cluster(self, host: Device | None = None, latency_s: float = 0.0) -> Cluster:
        """The cluster this testbed really realizes (see `emulated_cluster`); measures one host core if no `host`."""
        emulation = Emulation.of_limits(self.limits, self.bandwidth_scale if self.shaping else float("inf"),
                                        latency_s)
        return emulated_cluster(self.cluster, emulation, host or host_core_device())

    def describe(self) -> dict:
        """What this testbed emulates, for a report's `where`."""
        return {
            "launcher": "testbed", "run_id": self.run_id, "cluster": self.cluster.name,
            "devices": {n: {"namespace": self.namespace(n), "address": self.address(n), "ifname": self.ifname(n),
                            "cpu_cores": round(self.limits[n].cpu_cores, 4),
                            "relative_speed": round(self.limits[n].relative_speed, 4),
                            "memory_limit_bytes": self.limits[n].memory_bytes} for n in self.devices},
            "links": self.shaping.describe() if self.shaping else "not shaped",
            "cpu_quota": ("applied from the start" if self.cpu_quota_at_start else
                          "applied when the worker calls edgepool.testbed.worker.apply_cpu_quota()"),
            "emulated": ["CPU speed ratios (cgroup cpu quota)", "memory capacity (cgroup memory limit)",
                         "link bandwidth per pair (tc htb)", "shared-medium capacity (tc htb on an ifb)"],
            "not_emulated": ["link latency (no netem on this kernel)", "device compute kinds (GPU/NPU): every "
                             "device runs CPU code, only its speed relative to the fastest is kept"],
        }

    # -- lifecycle
    def start(self) -> "Testbed":
        if self._started:
            return self
        require_testbed()
        self.removed_leftovers = cleanup_leftovers()
        super().start()  # signal handlers + atexit first, so an interrupted setup is torn down too
        self._started = True
        try:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            self._state_file.write_text(json.dumps({"owner_pid": os.getpid(),
                                                    "owner_start": process_start_time(os.getpid())}))
            for cgroup in self.cgroups.values():
                cgroup.create(cpu_quota=self.cpu_quota_at_start)
            self.network.create()
            if self.shaping is not None:
                apply_shaping(self.network, self.shaping)
        except BaseException:
            self.teardown()
            raise
        return self

    @property
    def _state_file(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def _wrap(self, device: str, argv: list[str]) -> list[str]:
        if not self._started:
            raise RuntimeError("start the testbed first (`with Testbed(cluster) as tb:` or tb.start())")
        # join both cgroups, then the namespace, then become the worker: one pid all along
        cgroup = self.cgroups[device]
        steps = [f"echo $$ > {shlex.quote(str(p))}" for p in cgroup.procs_files]
        if not self.cpu_quota_at_start:  # an fd onto the quota file for `worker.apply_cpu_quota()`
            steps.append(f"exec {QUOTA_FD}> {shlex.quote(str(cgroup.quota_file))}")
        steps.append(f'exec ip netns exec {shlex.quote(self.namespace(device))} "$@"')
        script = " && ".join(steps)
        return ["/bin/sh", "-c", script, "edgepool-worker", *argv]

    def _worker_env(self, device: str) -> dict[str, str]:
        if self.cpu_quota_at_start:
            return {}
        return {QUOTA_FD_ENV: str(QUOTA_FD), QUOTA_US_ENV: str(self.cgroups[device].quota_us)}

    def run_in(self, device: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run one command to completion inside a device's cgroup and namespace (diagnostics, tests)."""
        env = {**kwargs.pop("env", os.environ), **self._worker_env(device)}
        return subprocess.run(self._wrap(device, [str(a) for a in argv]), env=env, **kwargs)

    def _failure_reason(self, handle: WorkerHandle) -> str:
        cgroup = self.cgroups[handle.device]
        if cgroup.oom_kills():
            limit = self.limits[handle.device].memory_bytes
            return (f"killed by the kernel's OOM killer: the device's memory limit of "
                    f"{limit / 2**30:.2f} GiB was exceeded (plan infeasible on this device)")
        return ""

    def _release(self) -> None:
        if not self._started:  # nothing was created (or it is already gone)
            return
        errors: list[str] = []
        for cgroup in self.cgroups.values():
            cgroup.kill_all()
        errors += self.network.destroy()
        for cgroup in self.cgroups.values():
            errors += cgroup.remove()
        self._state_file.unlink(missing_ok=True)
        self._started = False
        self.teardown_errors = errors
        for e in errors:
            log.warning("testbed teardown: %s", e)

    def leftovers(self) -> dict[str, list[str]]:
        """Namespaces, cgroups and live processes of this run still present (empty lists after teardown)."""
        prefix = f"{NAME_PREFIX}{self.run_id}-"
        return {"namespaces": list_namespaces(prefix),
                "cgroups": [str(p) for p in list_cgroups(prefix)],
                "processes": [str(h.pid) for h in self.handles if _alive(h.pid)]}


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _owner_alive(run_id: str) -> bool:
    try:
        state = json.loads((STATE_DIR / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return False
    start = process_start_time(int(state.get("owner_pid", -1)))
    return start is not None and start == state.get("owner_start")


def cleanup_leftovers() -> list[str]:
    """Remove namespaces and cgroups of earlier testbed runs whose owner process is gone.

    Runs of live owners (another testbed in use on this host) are left alone. Returns what was removed.
    """
    prefix = f"{NAME_PREFIX}{RUN_ID_PREFIX}"
    namespaces, cgroup_dirs = list_namespaces(prefix), list_cgroups(prefix)
    run_of = lambda name: name[len(NAME_PREFIX):].split("-", 1)[0]  # noqa: E731
    dead = {run_of(n) for n in namespaces} | {run_of(p.name) for p in cgroup_dirs}
    dead = {r for r in dead if not _owner_alive(r)}
    removed: list[str] = []
    stale_cgroups = [p for p in cgroup_dirs if run_of(p.name) in dead]
    if stale_cgroups:
        from edgepool.testbed.cgroups import kill_cgroup_processes
        kill_cgroup_processes(stale_cgroups)
    for ns in namespaces:
        if run_of(ns) in dead:
            delete_namespace(ns)
            removed.append(f"namespace {ns}")
    for err in remove_cgroup_dirs(stale_cgroups):
        log.warning("leftover cleanup: %s", err)
    removed += [f"cgroup {p}" for p in stale_cgroups]
    for run_id in dead:
        (STATE_DIR / f"{run_id}.json").unlink(missing_ok=True)
    if removed:
        log.warning("removed leftovers of crashed testbed runs: %s", ", ".join(removed))
    return removed
