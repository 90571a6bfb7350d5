"""Fograph for real: a GNN inference over fog nodes (and the cloud) on the emulated testbed, measured.

Every node of the cluster is one process (`fog_worker`) in its own network namespace and cgroup: the fog
nodes share `fog_cores` of this host in proportion to their catalog speed (`device_speed`), the cloud gets
`cloud_cores` (one torch thread: a real cloud computes faster, so its compute time is reported apart from its
transfer time), and the links are the cluster's, shaped by `tc htb` (a LAN among the fog nodes, a slower
WAN to the cloud). A vertex's data is sensed at the fog node nearest its position (`pos`, unit square; the
cluster's `location`s are read in the same square). Three plans run on the same processes:
- `fograph`: speed- and locality-aware METIS plan (`fograph_partition`), optionally compressed exchanges;
- `even-fog`: equal METIS parts on the fog nodes, blind to speed and to where data is sensed;
- `cloud`: every fog node uploads its sensed features over the WAN, the cloud computes the whole graph.
Each run's frame-0 output is checked against the model on the whole graph in one process.
"""
from __future__ import annotations

import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgepool.cluster import Cluster
from edgepool.errors import SpecError
from edgepool.graph.compression import Codec
from edgepool.graph.halo import partitioned_forward
from edgepool.graph.partition import FogCosts, FogPlan, cloud_plan, even_partition, nearest_homes, plan_fograph
from edgepool.local_device import best_time, torch_threads

WORKER = "edgepool.graph.fog_worker"


@dataclass
class FogSetup:
    """Who is who on the testbed, and the CPU share each node gets."""

    cluster: Cluster  # emulated: each device's FLOP/s = its cores x 1e9, so the testbed's quotas are these cores
    fog: list[str]
    cloud: str
    cores: dict[str, float]
    positions: np.ndarray  # [fog, 2] where each fog node senses, unit square

    @property
    def nodes(self) -> list[str]:
        return self.fog + [self.cloud]

    def describe(self) -> dict:
        return {"fog": self.fog, "cloud": self.cloud, "cores": {n: round(c, 4) for n, c in self.cores.items()},
                "devices": {n: self.cluster.devices[n].description for n in self.nodes},
                "links": {f"{a}-{b}": self.cluster.link(a, b).bandwidth * 8 for a in self.nodes for b in self.nodes
                          if a < b}}


def fog_setup(cluster: Cluster, cloud: str = "cloud", fog_cores: float = 1.0, cloud_cores: float = 1.0,
              min_cores: float = 0.02) -> FogSetup:
    """Split `fog_cores` among the fog nodes by speed; `cloud` names the cloud device of `cluster`."""
    from edgepool.costmodel import device_speed

    if cloud not in cluster.devices:
        raise SpecError(field="cloud", value=cloud, accepted=", ".join(cluster.devices),
                        hint="name the cluster's cloud device")
    fog = [n for n in cluster.devices if n != cloud]
    if not fog:
        raise SpecError(field="cluster", value=cluster.name, accepted="at least one fog node beside the cloud")
    missing = [n for n in fog if n not in cluster.locations]
    if missing:
        raise SpecError(field="location", value=missing, accepted="a location [x, y] in the unit square for every "
                        "fog node (where it senses)")
    speeds = {n: device_speed(cluster, n) for n in fog}
    total = sum(speeds.values())
    cores = {n: max(fog_cores * s / total, min_cores) for n, s in speeds.items()}
    cores[cloud] = cloud_cores

    def emulated(name: str):
        return cluster.devices[name].model_copy(update={"peak_flops": {"fp32": cores[name] * 1e9},
                                                        "efficiency": 1.0, "power_modes": [], "cpu_peak_flops": None})

    emulated_cluster = Cluster(name=f"{cluster.name}-emulated", devices={n: emulated(n) for n in cluster.devices},
                               graph=cluster.graph.copy(), media=dict(cluster.media),
                               locations=dict(cluster.locations), zones=dict(cluster.zones), source=cluster.source)
    positions = np.array([cluster.locations[n] for n in fog], dtype=float)
    return FogSetup(emulated_cluster, fog, cloud, cores, positions)


def measure_costs(task, trained, setup: FogSetup, codec: Codec | None = None, repeats: int = 3) -> FogCosts:
    """The planner's inputs, measured on one host core (one thread, best of `repeats`): the model's compute
    seconds per vertex (whole-graph inferences) and the slowest LAN link between fog nodes; with `codec`, its
    wire bytes and coding seconds too (`with_codec`)."""
    with torch_threads(1):
        compute = best_time(lambda: trained.predict(task.x), repeats)
    fog = setup.fog
    lan = min((setup.cluster.link(a, b).bandwidth for a in fog for b in fog if a < b), default=float("inf"))
    plain = FogCosts(compute / task.num_nodes, float(task.x.shape[1] * 4), lan)
    return plain if codec is None else with_codec(plain, task, codec, repeats)


def with_codec(costs: FogCosts, task, codec: Codec, repeats: int = 3) -> FogCosts:
    """`costs` with one vertex's raw features as `codec` sends them: its wire bytes, and the seconds to encode
    and decode them on one host core (one thread, best of `repeats`); the compute and the LAN stay."""
    degrees = task.degrees()
    coding = 0.0
    if codec.mode != "none":
        with torch_threads(1):
            coding = best_time(lambda: codec.decode(codec.encode(task.x, degrees), degrees, task.x.shape[1]),
                               repeats)
    return replace(costs, bytes_per_vertex=codec.payload_bytes(degrees, task.x.shape[1]) / task.num_nodes,
                   coding_seconds_per_vertex=coding / task.num_nodes)


def fog_plans(task, setup: FogSetup, costs: FogCosts, seed: int = 0) -> dict[str, FogPlan]:
    """The three plans over the same nodes (rank order: fog nodes, then the cloud)."""
    nodes = setup.nodes
    home = nearest_homes(task.pos, setup.positions)
    speeds = [setup.cores[n] for n in setup.fog] + [0.0]
    return {"fograph": plan_fograph(task.edge_index, home, nodes, speeds, costs, seed=seed),
            "even-fog": even_partition(task.edge_index, home, nodes, use=setup.fog, seed=seed),
            "cloud": cloud_plan(home, nodes, setup.cloud)}


@dataclass
class FogRun:
    """One plan (and codec) as measured: per-frame latency, streamed throughput, bytes, exactness."""

    name: str
    plan: dict
    codec: str
    latencies_s: list[float]
    throughput_fps: float
    bytes_per_frame: dict[str, float]  # per node, sent
    phases_s: dict[str, list[float]]  # per node, mean seconds per phase: raw exchange, take raw, layer 0, then per
    # later layer its halo exchange, take halo, layer (an exchange's time includes waiting for slower peers)
    max_abs_error: float  # frame 0 against the whole-graph model in one process
    agreement: float  # fraction of vertices with the same predicted class
    matches_in_process: bool  # equal to `partitioned_forward` with the same plan and codec

    @property
    def latency_s(self) -> float:
        return statistics.fmean(self.latencies_s)

    def to_dict(self) -> dict:
        return {"name": self.name, "plan": self.plan, "codec": self.codec, "latency_mean_s": self.latency_s,
                "latency_median_s": statistics.median(self.latencies_s), "latencies_s": self.latencies_s,
                "throughput_fps": self.throughput_fps, "bytes_per_frame": self.bytes_per_frame,
                "phases_s": self.phases_s, "max_abs_error": self.max_abs_error, "agreement": self.agreement,
                "matches_in_process": self.matches_in_process}


@dataclass
class FogMeasurement:
    runs: dict[str, FogRun]
    where: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"runs": {k: r.to_dict() for k, r in self.runs.items()}, "where": self.where}


def run_fog(task, trained, setup: FogSetup, runs: list[tuple[str, FogPlan, Codec]], *, latency_frames: int = 10,
            throughput_frames: int = 10, warmup: int = 2, launcher: str = "testbed", timeout_s: float = 900.0,
            work_dir: str | Path | None = None, progress: Callable[[str], None] | None = None) -> FogMeasurement:
    """Run each (name, plan, codec) on one set of node processes; `launcher` "testbed" (root: quotas, shaped
    links) or "local" (plain processes on loopback: exactness checks, no emulation). A temporary work folder
    is removed afterwards, also when a worker fails; a given `work_dir` keeps the workers' logs."""
    names = [r[0] for r in runs]
    if len(set(names)) != len(names) or not names:
        raise SpecError(field="runs", value=names, accepted="one or more runs with distinct names")
    if launcher not in ("testbed", "local"):
        raise SpecError(field="launcher", value=launcher, accepted="testbed, local")
    own_dir = work_dir is None
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="edgepool-fog-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if progress:
            progress(f"{len(setup.nodes)} node processes, {len(runs)} plans")
        outputs, results, where = _launch(task, trained, setup, runs, folder, launcher, timeout_s,
                                          {"warmup": warmup, "latency_frames": latency_frames,
                                           "throughput_frames": throughput_frames})
    finally:
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)
    with torch_threads(1):  # the workers' thread count: the same matrix kernels, so equal rows are equal bits
        reference = trained.predict(task.x)
        in_process = {name: partitioned_forward(trained.model, task.x, trained.edge_index, trained.edge_weight, plan,
                                                codec, task.degrees()) for name, plan, codec in runs}
    measured = {}
    for k, (name, plan, codec) in enumerate(runs):
        out = outputs[name]
        recs = [r["runs"][k] for r in results]
        latencies = [max(frame) for frame in zip(*(r["latencies_s"] for r in recs))]
        stream = max(r["stream_s"] for r in recs)
        measured[name] = FogRun(
            name=name, plan=plan.describe(task.edge_index), codec=codec.mode, latencies_s=latencies,
            throughput_fps=recs[0]["stream_frames"] / stream if stream > 0 else math.nan,
            bytes_per_frame={n: r["bytes_sent_per_frame"] for n, r in zip(setup.nodes, recs)},
            phases_s={n: [statistics.fmean(p) for p in zip(*r["phases_s"])] for n, r in zip(setup.nodes, recs)},
            max_abs_error=float((out - reference).abs().max()),
            agreement=float((out.argmax(1) == reference.argmax(1)).float().mean()),
            matches_in_process=bool(torch.equal(out, in_process[name])))
    return FogMeasurement(measured, where)


def _launch(task, trained, setup: FogSetup, runs, folder: Path, launcher: str, timeout_s: float,
            frames: dict) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """Write the job, run one worker per node, and gather each run's frame-0 output ([n, C]) and the results."""
    from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers

    model = trained.model
    torch.save({"x": task.x, "edge_index": trained.edge_index, "edge_weight": trained.edge_weight,
                "degrees": task.degrees()}, folder / "graph.pt")
    torch.save(model.state_dict(), folder / "weights.pt")
    job = WorkerJob.create({
        "graph": str(folder / "graph.pt"), "weights": str(folder / "weights.pt"),
        "model": {"kind": model.kind, "in_dim": model.dims[0], "hidden": model.dims[1] if len(model.dims) > 2
                  else model.dims[-1], "out_dim": model.dims[-1], "layers": model.num_layers},
        "runs": [{"name": n, "plan": p.to_dict(), "codec": {"mode": c.mode, "high_degree": c.high_degree}}
                 for n, p, c in runs], **frames, "timeout_s": timeout_s}, folder / "job")
    nodes = setup.nodes
    started = time.monotonic()
    if launcher == "testbed":
        from edgepool.testbed.shaping import pace_per_packet
        from edgepool.testbed.testbed import Testbed

        tb = Testbed(setup.cluster, nodes, cpu_budget=sum(setup.cores.values()),
                     max_cores_per_device=max(setup.cores.values()), min_cores=0.01, cpu_quota_at_start=False)
        with tb:
            pace_per_packet(tb)
            results = run_workers(tb, WORKER, job, nodes, timeout_s=timeout_s)
            where = describe_launcher(tb)
        where.update({"leftovers": tb.leftovers(), "teardown_errors": list(tb.teardown_errors)})
    else:
        from edgepool.testbed.launcher import LocalLauncher

        with LocalLauncher() as local:
            results = run_workers(local, WORKER, job, nodes, timeout_s=timeout_s)
            where = describe_launcher(local)
    where.update({"machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                              "python": sys.version.split()[0], "torch": torch.__version__},
                  "command": " ".join(sys.argv), "run_s": round(time.monotonic() - started, 2),
                  "setup": setup.describe(),
                  "not_emulated": "link latency (no netem here): the WAN's round trips are missing, which favours "
                                  "the cloud; the cloud's speed is capped at one host thread"})
    outputs = {}
    for name, plan, _ in runs:
        out = torch.empty(task.num_nodes, model.dims[-1])
        for rank in range(len(nodes)):
            owned = np.flatnonzero(plan.owner == rank)
            if len(owned):
                out[torch.from_numpy(owned)] = torch.load(job.folder / f"out-{name}-rank{rank}.pt")
        outputs[name] = out
    return outputs, results, where
