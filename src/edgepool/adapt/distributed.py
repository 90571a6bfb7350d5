"""Cloud-edge adaptation with the edge and the cloud in two processes joined by a real, shaped link.

`run_over_link` trains (or reads back) the models, then starts `edgepool.adapt.worker` twice through the one
worker harness: the cloud as rank 0 and the edge as rank 1. On the emulated testbed (root) each runs in its
own network namespace and CPU quota, and the link between them is `tc htb`-shaped to `bandwidth_bps`, so
uploads and states are real bytes at that rate; without root it falls back to two plain local processes over
loopback (the report's `where` says which). The edge's per-sample results come back as an `AdaptRun`, the
same record an in-process run (`run.run_stream`) gives, so the two can be compared sample by sample.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.adapt.run import AdaptRun
from edgepool.adapt.stream import Phase
from edgepool.errors import SpecError

WORKER = "edgepool.adapt.worker"
ROLES = ("server", "device")  # rank 0 the cloud, rank 1 the edge: the names of split's two-device cluster
CLOUD_METHODS = ("cema", "upload-all", "random")  # the methods with a cloud to talk to
EDGE_CORES, CLOUD_CORES = 0.25, 1.0  # CPU shares on the testbed (at most the host's cores together)
PROGRESS_FILE = "edge-progress"


@dataclass
class LinkRun:
    """An over-the-link run: the edge's `AdaptRun`, both sides' records, what ran where."""

    run: AdaptRun
    edge: dict
    cloud: dict
    where: dict
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        link = self.edge["link"]
        return {**self.run.summary(), "where": self.where, "settings": self.settings,
                "link": {k: link[k] for k in ("bytes_up", "bytes_down", "uploads_sent", "states_received",
                                              "connects", "drops", "resent", "dropped_uploads", "reply_timeouts")},
                "link_events": link["events"], "outage_how": self.edge["outage_how"],
                "edge_serve_s_per_batch": round(float(np.mean(self.edge["serve_s"])), 5),
                "edge_link_wait_s_total": round(float(np.sum(self.edge["link_wait_s"])), 3),
                "edge_wall_s": round(self.edge["wall_s"], 2), "cloud": self.cloud["stats"]}


def run_over_link(method: str, phases: list[Phase], *, dataset: str = "mnist", cache_dir: str | Path,
                  seed: int = 0, batch: int = 64, random_p: float | None = None, bandwidth_bps: float = 10e6,
                  launcher: str = "testbed", outages: list[tuple[int, int]] = (), reply_timeout_s: float = 10.0,
                  batch_interval_s: float = 0.0,
                  edge_cores: float = EDGE_CORES, cloud_cores: float = CLOUD_CORES, timeout_s: float = 900.0,
                  progress: Callable[..., None] | None = None) -> LinkRun:
    """`method` over the stream of `phases`, edge and cloud in two processes (see the module docstring).
    `outages`: [first batch, end batch) pairs during which the link is down; `batch_interval_s`: a batch
    arrives every this many seconds (0: the next one as soon as the last is served)."""
    from edgepool.adapt.models import trained_models
    from edgepool.adapt.stream import build_stream
    from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers
    from edgepool.runtime.launch import started_launcher
    from edgepool.split.latency import two_device_cluster

    if method not in CLOUD_METHODS:
        raise SpecError(field="method", value=method, accepted=f"{', '.join(CLOUD_METHODS)} (a cloud to talk to)")
    if not batch_interval_s >= 0:
        raise SpecError(field="batch_interval_s", value=batch_interval_s, accepted="a number of seconds >= 0")
    if not bandwidth_bps > 0:
        raise SpecError(field="bandwidth", value=bandwidth_bps, accepted="a positive number of bits/s")
    for start, end in outages:
        if not 0 <= start < end:
            raise SpecError(field="outages", value=[start, end],
                            accepted="[first batch, end batch) with 0 <= first < end")
    models = trained_models(dataset, cache_dir=cache_dir, seed=seed)  # train once here; the workers read it back
    stream = build_stream(models.data, phases, seed=seed)
    settings = {"method": method, "dataset": dataset, "cache_dir": str(cache_dir), "seed": seed, "batch": batch,
                "random_p": random_p, "phases": [[p.corruption, p.severity, p.n] for p in phases],
                "outages": [list(o) for o in outages], "reply_timeout_s": reply_timeout_s,
                "batch_interval_s": batch_interval_s, "timeout_s": timeout_s}
    job = WorkerJob.create(settings, prefix="edgepool-adapt-")
    total = len(stream.batches(batch))

    def tick() -> None:
        if progress is not None:
            done = (job.folder / PROGRESS_FILE)
            progress(f"{method} over the link", int(done.read_text() or 0) if done.is_file() else 0, total)

    cluster = two_device_cluster(bandwidth_bps, edge_cores, cloud_cores)
    with started_launcher(launcher, cluster, cpu_budget=edge_cores + cloud_cores,
                          max_cores_per_device=max(edge_cores, cloud_cores), min_cores=0.01) as running:
        cloud, edge = run_workers(running, WORKER, job, list(ROLES), timeout_s=timeout_s,
                                  env={"EDGEPOOL_ADAPT_PROGRESS": str(job.folder / PROGRESS_FILE)}, on_tick=tick)
        where = describe_launcher(running)
    where = {**where, "link_bps": bandwidth_bps, "edge_cores": edge_cores, "cloud_cores": cloud_cores}
    predictions = np.asarray(edge["predictions"], dtype=np.int64)
    link = edge["link"]
    run = AdaptRun(method, predictions == stream.labels, stream.phase.copy(), np.asarray(edge["uploaded"], bool),
                   [p.label for p in phases], link["bytes_up"], link["bytes_down"], link["uploads_sent"],
                   edge["wall_s"])
    job.discard()
    return LinkRun(run, edge, cloud, where, settings)


def write_summary(result: LinkRun, path: Path) -> Path:
    from edgepool.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(result.summary(), indent=2, default=str))
