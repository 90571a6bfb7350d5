"""The cluster as this host emulates it, so the simulator describes what the runtime really ran.

On the testbed each device is one worker process with one torch thread and a CPU quota of `cpu_cores`
(`edgepool.testbed.device_limits`: the fastest device gets one core, the others in proportion to their
speed, all scaled down together if the quotas exceed the host's cores). So an emulated device computes at
this host's single-thread speed times its quota, its links have the spec's bandwidth (shaped with `tc`)
but veth latency (latency is not emulated), and its memory limit is the device's memory. Without the
testbed (local launcher) every worker shares the host's cores and loopback. `launcher_emulation` says which;
`edgepool.testbed.emulated_cluster` builds the cluster from it.

`calibrate_host` measures one core of this host (`testbed.host_core_device`: single-thread matmul speed and
memory bandwidth), and fits the cost model's efficiency and per-layer overhead (`CostModel.calibrate`, least
squares) to profiles of the model measured at two batch sizes, so compute times come from what this machine
does on these very layers, and the CPU a gloo message costs each end (`probes.comm.measure_message_cpu_s`).
On the testbed, what fraction of its quota each device really gets is measured too, inside its cgroup
(`probes.speed`): small quotas and busy neighbour cores make a device slower than its quota alone says. An
emulated device with `c` cores computes at `c` times the host's rate and pays `overhead / c` per layer pass.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.device import Device
from edgepool.local_device import torch_threads
from edgepool.profile import ModelProfile, profile_model
from edgepool.testbed.testbed import Emulation, host_core_device

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
    message_cpu_s: float = 0.0  # CPU seconds one gloo message costs each end (`runtime.probes.comm`)

    def core_device(self) -> Device:
        """One core of this host, as `testbed.emulated_cluster` scales it (efficiency: the fitted one)."""
        return Device(name="host-1-thread", kind="cpu", peak_flops={"fp32": self.flops}, memory_bytes=2**34,
                      memory_bandwidth=self.memory_bandwidth, cpu_cores=1, efficiency=self.efficiency)

    def to_dict(self) -> dict:
        return {"flops": self.flops, "memory_bandwidth": self.memory_bandwidth, "efficiency": self.efficiency,
                "layer_overhead_s": self.layer_overhead_s, "measured_on": self.profile.measured_on,
                "profile_batch": self.profile.batch,
                "message_cpu_s": self.message_cpu_s}


def calibrate_host(bundle, batch: int, seq: int | None = None, repeats: int = 3,
                   optimizer: str = "sgd") -> HostCalibration:
    """Measure with one thread, as the workers run: one host core (`testbed.host_core_device`), then the
    model's layers on it."""
    from edgepool.runtime.probes.comm import measure_message_cpu_s

    with ahead_of_other_jobs():
        host = host_core_device("host-1-thread")
        with torch_threads(1):
            small = _fastest_profile(bundle, 1, seq, repeats)
            profile = _fastest_profile(bundle, max(batch, 2), seq, repeats)
    message_cpu_s = measure_message_cpu_s(max(l.output_bytes for l in profile.layers) // profile.batch)
    fitted = CostModel(optimizer=optimizer).calibrate([small, profile], host)
    return HostCalibration(host.peak("fp32"), host.memory_bandwidth, fitted.efficiency[host.name],
                           fitted.layer_overhead_s[host.name], profile, message_cpu_s)


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


def launcher_emulation(cluster: Cluster, launcher: dict, quota_efficiency: dict[str, float] | None = None
                       ) -> Emulation:
    """How the launcher described in `launcher` (its `describe()`) runs `cluster` on this host, for
    `testbed.emulated_cluster`: on the testbed each device gets its CPU quota times the fraction of it that it
    was measured to get (`quota_efficiency`, from `probes.speed`), shaped links and veth latency; local
    processes share the host's cores and talk over loopback."""
    if launcher.get("launcher") == "testbed":
        cores = {n: float(d["cpu_cores"]) * (quota_efficiency or {}).get(n, 1.0)
                 for n, d in launcher["devices"].items()}
        return Emulation(cores={n: cores.get(n, 1.0) for n in cluster.devices}, latency_s=VETH_LATENCY_S)
    share = min(1.0, (os.cpu_count() or 1) / max(len(cluster.devices), 1))
    return Emulation(cores={n: share for n in cluster.devices}, loopback_bandwidth=LOOPBACK_BANDWIDTH)


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
