"""The cluster as this host emulates it, so the simulator describes what the runtime really ran.

On the testbed each device is one worker process with one torch thread and a CPU quota of `cpu_cores`
(`edgepool.testbed.device_limits`: the fastest device gets one core, the others in proportion to their
speed, all scaled down together if the quotas exceed the host's cores). So an emulated device computes at
this host's single-thread speed times its quota, its links have the spec's bandwidth (shaped with `tc`)
but veth latency (latency is not emulated), and its memory limit is the device's memory. Without the
testbed (local launcher) every worker shares the host's cores and loopback.

`calibrate_host` measures this host's single-thread matmul speed and memory bandwidth, and fits the cost
model's efficiency and per-layer overhead (`CostModel.calibrate`, least squares) to profiles of the model
measured at two batch sizes, so compute times come from what this machine does on these very layers, and
the CPU a gloo message costs each end (`message_probe`).
On the testbed, what fraction of its quota each device really gets is measured too, inside its cgroup
(`speed_probe`): small quotas and busy neighbour cores make a device slower than its quota alone says. An
emulated device with `c` cores computes at `c` times the host's rate and pays `overhead / c` per layer pass.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace

import networkx as nx
import torch

from edgepool.cluster import Cluster, Link
from edgepool.costmodel import CostModel
from edgepool.device import Device
from edgepool.profile import ModelProfile, profile_model

VETH_LATENCY_S = 5e-5  # one hop over a veth pair and the bridge (see edgepool.testbed.shaping)
LOOPBACK_BANDWIDTH = 2e9  # bytes/s, gloo over loopback on this kind of host (order of magnitude)


@dataclass(frozen=True)
class HostCalibration:
    """This host, one torch thread: what a worker with a whole core computes."""

    flops: float  # fp32 FLOP/s of a 1024x1024 matmul
    memory_bandwidth: float  # bytes/s
    efficiency: float  # fitted: roofline over measured time of the model's layers
    layer_overhead_s: float  # fitted: fixed time per layer pass (Python, dispatch)
    profile: ModelProfile  # the measured profile at the larger batch (planners and simulator read it)
    message_cpu_s: float = 0.0  # CPU seconds one gloo message costs each end (`runtime.message_probe`)

    def to_dict(self) -> dict:
        return {"flops": self.flops, "memory_bandwidth": self.memory_bandwidth, "efficiency": self.efficiency,
                "layer_overhead_s": self.layer_overhead_s, "measured_on": self.profile.measured_on,
                "profile_batch": self.profile.batch,
                "message_cpu_s": self.message_cpu_s}


def calibrate_host(bundle, batch: int, seq: int | None = None, repeats: int = 3,
                   optimizer: str = "sgd") -> HostCalibration:
    """Measure with one thread, as the workers run."""
    from edgepool.local_device import measure_matmul_flops, measure_memory_bandwidth
    from edgepool.runtime.message_probe import measure_message_cpu_s

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ahead_of_other_jobs():
            flops = measure_matmul_flops(512)
            bandwidth = measure_memory_bandwidth(32 * 2**20)
            small = _fastest_profile(bundle, 1, seq, repeats)
            profile = _fastest_profile(bundle, max(batch, 2), seq, repeats)
    finally:
        torch.set_num_threads(threads)
    message_cpu_s = measure_message_cpu_s(max(l.output_bytes for l in profile.layers) // profile.batch)
    host = Device(name="host-1-thread", kind="cpu", peak_flops={"fp32": flops}, memory_bytes=2**34,
                  memory_bandwidth=bandwidth, cpu_cores=1, efficiency=1.0)
    fitted = CostModel(optimizer=optimizer).calibrate([small, profile], host)
    return HostCalibration(flops, bandwidth, fitted.efficiency[host.name], fitted.layer_overhead_s[host.name],
                           profile, message_cpu_s)


@contextlib.contextmanager
def ahead_of_other_jobs(niceness: int = -15):
    """Calibrate at a high scheduling priority where allowed (root): testbed workers outweigh other jobs on
    the host (`testbed.cgroups.DEVICE_CPU_SHARES`), so the host speed they are emulated from must not be
    measured while those jobs take half of it."""
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:  # not root: measure at the normal priority
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


def _fastest_profile(bundle, batch: int, seq: int | None, repeats: int, rounds: int = 3) -> ModelProfile:
    """Per layer, the fastest of a few measured profiles: on a shared host, other jobs only ever add time,
    while a worker under a small CPU quota still gets its whole quota."""
    profiles = [profile_model(bundle, batch, seq, measure=True, repeats=repeats) for _ in range(rounds)]
    best = profiles[0]
    for other in profiles[1:]:
        for mine, theirs in zip(best.layers, other.layers):
            mine.fwd_time_s = min(mine.fwd_time_s, theirs.fwd_time_s)
            mine.bwd_time_s = min(mine.bwd_time_s, theirs.bwd_time_s)
    return best


def emulated_cluster(cluster: Cluster, launcher: dict, host: HostCalibration,
                     quota_efficiency: dict[str, float] | None = None) -> Cluster:
    """`cluster` as the launcher described in `launcher` (its `describe()`) runs it on this host;
    `quota_efficiency` (`speed_probe.measure_quota_efficiency`) is what fraction of its quota each testbed
    device was measured to get."""
    testbed = launcher.get("launcher") == "testbed"
    cores: dict[str, float] = {}
    if testbed:
        cores = {n: float(d["cpu_cores"]) * (quota_efficiency or {}).get(n, 1.0)
                 for n, d in launcher["devices"].items()}
    else:  # unshaped local processes share the host's cores
        share = min(1.0, (os.cpu_count() or 1) / max(len(cluster.devices), 1))
        cores = {n: share for n in cluster.devices}
    devices = {}
    for name, device in cluster.devices.items():
        c = cores.get(name, 1.0)
        devices[name] = device.model_copy(update={
            "peak_flops": {"fp32": host.flops * c}, "memory_bandwidth": host.memory_bandwidth * min(c, 1.0),
            "efficiency": host.efficiency, "power_modes": [], "cpu_cores": 1,
            "description": f"{device.name} emulated: {c:.3f} of one core of this host",
        })
    graph = nx.Graph()
    graph.add_nodes_from(devices)
    for a, b, data in cluster.graph.edges(data=True):
        link: Link = data["link"]
        graph.add_edge(a, b, link=Link(bandwidth=link.bandwidth if testbed else LOOPBACK_BANDWIDTH,
                                       latency_s=VETH_LATENCY_S if testbed else 0.0,
                                       medium=link.medium if testbed else None))
    return replace(cluster, name=f"{cluster.name} (emulated here)", devices=devices, graph=graph,
                   media=dict(cluster.media) if testbed else {}, power_modes={})


def emulated_cost_model(emulated: Cluster, host: HostCalibration, optimizer: str = "sgd",
                        precision: str = "fp32") -> CostModel:
    """Efficiencies live on the emulated devices; per-layer and per-message overheads scale with 1 / cores."""
    cores = {n: d.peak("fp32") / host.flops for n, d in emulated.devices.items()}
    return CostModel(precision=precision, optimizer=optimizer,
                     layer_overhead_s={n: host.layer_overhead_s / c for n, c in cores.items()},
                     message_overhead_s={n: host.message_cpu_s / c for n, c in cores.items()})


def simulator_error(simulated: float, measured: float) -> float:
    """|sim - measured| / measured, the issue's definition."""
    return abs(simulated - measured) / measured
