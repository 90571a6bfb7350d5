"""End-to-end latency of split-computing options, measured for real on the emulated testbed.

The rate-accuracy table (`OptionMeasure`) models latency as compute + bytes / bandwidth; this measures it:
a weak device (a CPU quota) and an edge server (another quota) in two network namespaces joined by one
`tc htb`-shaped link, each running its side of a pipeline (`latency_worker`), one image at a time, at each
bandwidth of a sweep. What the model leaves out (framing, TCP, gloo, the quota's duty cycle) shows up here.

Default CPU shares (an assumption, stated so results can be read): the device gets DEVICE_CORES = 0.15 of
one host core, the server SERVER_CORES = 1 core (one torch thread). The ratio comes from the catalog's rpi4
(48 GFLOP/s fp32 peak x 0.25 efficiency = 12 GFLOP/s for its 4 cores) over one core of the host it was set
on (an AMD EPYC core, 77 GFLOP/s measured: fp32 512x512 `torch.mm`, one thread): 12 / 77 = 0.156.
`pi_class_cores()` recomputes it for another host.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgepool.split.options import SplitOption

DEVICE_CORES = 0.15  # a Raspberry Pi 4 on one core of the host this was set on (see the module docstring)
SERVER_CORES = 1.0
DEVICE_TYPE, SERVER_TYPE = "rpi4", "laptop-i7-1360p"  # catalog entries the two emulated devices are named after
ROLES = ("device", "server")  # rank 0, rank 1
WORKER = "edgepool.split.latency_worker"


def pi_class_cores(host_core_flops: float | None = None, device: str = DEVICE_TYPE) -> float:
    """The share of one host core that computes like the catalog's `device` (its effective FLOP/s, all
    cores); measures one host core (fp32 matmul, one thread) when `host_core_flops` is not given."""
    from edgepool.catalog import get_device

    if host_core_flops is None:
        from edgepool.testbed.testbed import host_core_device
        host_core_flops = host_core_device().peak("fp32")
    d = get_device(device)
    return d.peak("fp32") * d.efficiency / host_core_flops


@dataclass
class LatencyMeasure:
    """One option at one bandwidth: per-image end-to-end seconds as the device saw them.

    Local options are measured once (nothing crosses the link) and listed at every bandwidth with
    `measured_bps` saying where they were run; device_s / server_s are compute seconds per image.
    """

    option: str
    bandwidth_bps: float
    latencies_s: list[float]
    bytes_per_image: float
    location: str = ""
    predictions: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)  # index of each timed image in the image array
    device_s: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)
    measured_bps: float | None = None

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.latencies_s) if self.latencies_s else math.nan

    @property
    def median_s(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else math.nan

    def to_dict(self) -> dict:
        return {"option": self.option, "location": self.location, "bandwidth_bps": self.bandwidth_bps,
                "mean_s": self.mean_s, "median_s": self.median_s, "bytes_per_image": self.bytes_per_image,
                "latencies_s": list(self.latencies_s), "predictions": list(self.predictions),
                "images": list(self.images), "device_s": list(self.device_s), "server_s": list(self.server_s),
                "measured_bps": self.measured_bps}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyMeasure":
        return cls(**{k: v for k, v in data.items() if k not in ("mean_s", "median_s")})


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


@dataclass
class LatencySweep:
    """Every option at every bandwidth, and what they ran on (quotas, link shaping, machine, command)."""

    measures: list[LatencyMeasure]
    bandwidths_bps: list[float]
    testbed: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(m.option for m in self.measures))

    def measure(self, name: str, bandwidth_bps: float) -> LatencyMeasure:
        for m in self.measures:
            if m.option == name and _same(m.bandwidth_bps, bandwidth_bps):
                return m
        raise KeyError(f"no measure of {name!r} at {bandwidth_bps:g} bit/s; options: {', '.join(self.names)}; "
                       f"bandwidths: {', '.join(f'{b:g}' for b in self.bandwidths_bps)}")

    def latency(self, name: str, bandwidth_bps: float) -> float:
        """Mean seconds per image: what n images cost, n x this. Even when single images are early or late
        (a quota's duty cycle, or htb's GSO bursts without `pace_per_packet`) the total stays right."""
        return self.measure(name, bandwidth_bps).mean_s

    def best(self, bandwidth_bps: float, names: Sequence[str] | None = None) -> LatencyMeasure:
        """The option with the lowest mean latency at this bandwidth (among `names` if given)."""
        pool = [self.measure(n, bandwidth_bps) for n in (names if names is not None else self.names)]
        if not pool:
            raise ValueError("no options to choose from")
        return min(pool, key=lambda m: m.mean_s)

    def to_dict(self) -> dict:
        return {"bandwidths_bps": list(self.bandwidths_bps), "measures": [m.to_dict() for m in self.measures],
                "testbed": self.testbed}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencySweep":
        return cls(measures=[LatencyMeasure.from_dict(m) for m in data["measures"]],
                   bandwidths_bps=list(data["bandwidths_bps"]), testbed=dict(data.get("testbed", {})))


def two_device_cluster(bandwidth_bps: float, device_cores: float, server_cores: float):
    """A device and a server joined by one link of `bandwidth_bps` bits/s. Their FLOP/s are set to their
    cores (efficiency 1), so the testbed's speed-proportional quotas come out as exactly these cores."""
    from edgepool.catalog import get_device
    from edgepool.cluster import Cluster

    def emulated(kind: str, name: str, cores: float):
        return get_device(kind).model_copy(update={"name": name, "peak_flops": {"fp32": cores * 1e9},
                                                   "efficiency": 1.0, "power_modes": []})

    devices = [emulated(DEVICE_TYPE, "device", device_cores), emulated(SERVER_TYPE, "server", server_cores)]
    return Cluster.uniform(devices, bandwidth=bandwidth_bps / 8, name=f"split-{bandwidth_bps:g}bps")


def _records(results: list[dict]) -> tuple[dict, dict]:
    device, server = results
    return {r["name"]: r for r in device["options"]}, {r["name"]: r for r in server["options"]}


def measure_latency(factory: str, factory_kwargs: dict, options: list[SplitOption], images: np.ndarray,
                    bandwidths_bps: list[float], *, device_cores: float = DEVICE_CORES,
                    server_cores: float = SERVER_CORES, warmup: int = 2, repeats: int = 10,
                    progress: Callable[[int, int], None] | None = None, env: dict[str, str] | None = None,
                    timeout_s: float = 1800.0, work_dir: str | Path | None = None,
                    per_packet: bool = True) -> LatencySweep:
    """Run every option across the testbed at each bandwidth (bits/s); one testbed per bandwidth.

    `factory` ("module:function") builds an option's (device_side, server_side) in each worker (see
    `latency_worker`); `env` is added to the workers' environment (e.g. PYTHONPATH for a factory outside the
    package). Local options run only in the first testbed and are reused at every bandwidth. `progress(done,
    total)` counts testbed runs; `per_packet`: see `pace_per_packet`. Raises `TestbedUnavailable` when this
    host cannot run the testbed (not root, no tc, no cgroup v1): the caller decides on a fallback. A failed
    run keeps its folder (the workers' logs; the WorkerFailed message names it)."""
    from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers
    from edgepool.testbed.shaping import pace_per_packet
    from edgepool.testbed.system import require_testbed
    from edgepool.testbed.testbed import Testbed

    require_testbed()
    if not bandwidths_bps or not options:
        raise ValueError("give at least one bandwidth and one option")
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise ValueError(f"option names repeat: {names}")
    host_cores = os.cpu_count() or 1
    if device_cores + server_cores > host_cores:
        raise ValueError(f"device_cores + server_cores = {device_cores + server_cores:g} exceeds this host's "
                         f"{host_cores} cores: the two would not get their quotas")
    local = [o for o in options if o.location == "device"]
    remote = [o for o in options if o.location != "device"]
    runs = [(bw, remote + (local if i == 0 else [])) for i, bw in enumerate(bandwidths_bps)]
    runs = [(bw, opts) for bw, opts in runs if opts]
    own_dir = work_dir is None
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="edgepool-split-latency-"))
    np.save(folder / "images.npy", np.ascontiguousarray(images))

    measures: dict[tuple[str, float], LatencyMeasure] = {}
    described: list[dict] = []
    for done, (bw, opts) in enumerate(runs):
        if progress is not None:
            progress(done, len(runs))
        job = WorkerJob.create({"factory": factory, "kwargs": factory_kwargs, "options": [o.to_dict() for o in opts],
                                "images": str(folder / "images.npy"), "warmup": warmup, "repeats": repeats,
                                "timeout_s": timeout_s}, folder / f"run{done}")
        cluster = two_device_cluster(bw, device_cores, server_cores)
        started = time.monotonic()
        with Testbed(cluster, list(ROLES), cpu_budget=device_cores + server_cores,
                     max_cores_per_device=max(device_cores, server_cores), min_cores=0.01,
                     cpu_quota_at_start=False) as tb:
            if per_packet:
                pace_per_packet(tb)
            setup_s = time.monotonic() - started
            results = run_workers(tb, WORKER, job, list(ROLES), timeout_s=timeout_s, env=env)
            where = describe_launcher(tb)
        described.append({"bandwidth_bps": bw, "run_s": round(time.monotonic() - started, 2),
                          "setup_s": round(setup_s, 2), "leftovers": tb.leftovers(),
                          "teardown_errors": list(tb.teardown_errors), "where": where,
                          "quota_applied": [r["quota_applied"] for r in results]})
        device_recs, server_recs = _records(results)
        for o in opts:
            d, s = device_recs[o.name], server_recs[o.name]
            sent = d["bytes"]
            measures[(o.name, bw)] = LatencyMeasure(
                option=o.name, bandwidth_bps=bw, latencies_s=d["latencies_s"], location=o.location,
                bytes_per_image=statistics.fmean(sent) if sent else 0.0, predictions=d["predictions"],
                images=d["image"], device_s=d["device_s"], server_s=s["server_s"], measured_bps=bw)
        if own_dir:
            job.discard()
    if progress is not None:
        progress(len(runs), len(runs))
    if own_dir:
        shutil.rmtree(folder, ignore_errors=True)

    ordered = []
    for bw in bandwidths_bps:
        for o in options:
            if o.location == "device":
                ordered.append(replace(measures[(o.name, runs[0][0])], bandwidth_bps=bw))
            else:
                ordered.append(measures[(o.name, bw)])
    testbed = {"device_cores": device_cores, "server_cores": server_cores, "device_type": DEVICE_TYPE,
               "server_type": SERVER_TYPE, "link": "one link device<->server, tc htb at each bandwidth (TCP "
               "payload rate; latency not emulated, about 0.05 ms on veth)"
               + ("; veth gso_max_segs 1: htb paces MTU packets" if per_packet else "; veth GSO on (bursts)"),
               "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                           "cores": host_cores, "python": sys.version.split()[0]},
               "factory": factory, "factory_kwargs": factory_kwargs, "warmup": warmup, "repeats": repeats,
               "command": " ".join(sys.argv), "runs": described,
               "notes": "latency = device compute + payload over the link + server compute + class back, timed "
                        "on the device, one image at a time; local options measured once, listed at every bandwidth"}
    return LatencySweep(measures=ordered, bandwidths_bps=list(bandwidths_bps), testbed=testbed)


def draw_latency_sweep(sweep: LatencySweep, path: str | Path, title: str | None = None) -> Path:
    """Mean latency vs bandwidth (log x), one line per option: where each option stops paying off."""
    from edgepool.plotting import save_figure, plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    bws = sorted(sweep.bandwidths_bps)
    colors = plt.get_cmap("tab20").colors
    for i, name in enumerate(sweep.names):
        ys = [sweep.latency(name, bw) for bw in bws]
        local = sweep.measure(name, bws[0]).location == "device"
        ax.plot([b / 1e6 for b in bws], ys, linestyle="--" if local else "-", marker="" if local else "o",
                label=name, color=colors[i % len(colors)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link bandwidth (Mbit/s)")
    ax.set_ylabel("mean latency per image (s)")
    cores = sweep.testbed.get("device_cores"), sweep.testbed.get("server_cores")
    ax.set_title(title or f"split computing on the testbed (device {cores[0]} core, server {cores[1]} core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)
