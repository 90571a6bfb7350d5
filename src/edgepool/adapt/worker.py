"""One side of a cloud-edge adaptation run in its own process: `python -m edgepool.adapt.worker JOB.json`.

Started by `edgepool.adapt.distributed.run_over_link` through the worker harness: rank 0 is the cloud (it
listens at MASTER_ADDR:MASTER_PORT, which the launcher sets to rank 0's address), rank 1 the edge, which
connects there. On the emulated testbed they sit in two network namespaces joined by a `tc`-shaped link,
so what travels are real bytes at the link's rate.

The edge serves the stream batch after batch with its forward-only model, queues its uploads on an
`EdgeLink` and waits for the reply at most `reply_timeout_s` (not at all while the link is down), applies
the newest state whenever one arrives. An outage in the job (`outages`: [first batch, end batch) pairs)
takes the edge's network interface down for real on the testbed (`ip link set ... down` inside its
namespace), or holds the link in the edge's process under the local launcher (no namespace to cut).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from edgepool.adapt.link import CloudStats, EdgeLink, listen, serve_cloud
from edgepool.adapt.messages import decode_state, decode_upload, encode_state, encode_upload
from edgepool.runtime.harness import read_job, write_result

CLOUD, EDGE = 0, 1  # ranks


def build_side(job: dict, rank: int):
    """This rank's half of `build_sides` (the same fresh copies an in-process run makes) and the stream."""
    from edgepool.adapt.models import trained_models
    from edgepool.adapt.run import RunSettings, build_sides
    from edgepool.adapt.stream import Phase, build_stream

    models = trained_models(job["dataset"], cache_dir=job["cache_dir"], seed=job["seed"])
    edge, cloud = build_sides(job["method"], models, RunSettings(batch=job["batch"], seed=job["seed"]),
                              random_p=job.get("random_p"))
    if rank == CLOUD:
        return cloud, None
    stream = build_stream(models.data, [Phase(*p) for p in job["phases"]], seed=job["seed"])
    return edge, stream


def run_cloud(job: dict, cloud) -> dict:
    """Listen, answer uploads with the edge's new normalization state until the edge says goodbye."""
    listener = listen(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500")))
    try:
        stats = serve_cloud(listener, lambda payload: encode_state(cloud.handle(decode_upload(payload))),
                            idle_timeout_s=float(job.get("timeout_s", 600)), stats=CloudStats())
    finally:
        listener.close()
    return {"role": "cloud", "stats": vars(stats)}


class _Outages:
    """Takes the link down at the job's batches and back up after them."""

    def __init__(self, outages: list[list[int]], link: EdgeLink):
        self.outages, self.link = [tuple(o) for o in outages], link
        self.ifname = os.environ.get("GLOO_SOCKET_IFNAME") if os.environ.get("EDGEPOOL_LAUNCHER") == "testbed" else None
        self.how = (f"interface {self.ifname} taken down in the edge's network namespace" if self.ifname else
                    "link held in the edge's process (local launcher: no interface to take down)")
        self.down = False

    def before(self, batch: int) -> None:
        want = any(start <= batch < end for start, end in self.outages)
        if want == self.down:
            return
        self.down = want
        if self.ifname:
            subprocess.run(["ip", "link", "set", "dev", self.ifname, "down" if want else "up"], check=True)
            self.link.note(f"interface {self.ifname} {'down' if want else 'up'} before batch {batch}")
        else:
            self.link.hold(want)


def run_edge(job: dict, edge, stream) -> dict:
    """Serve the stream; returns per-sample predictions and uploads, per-batch timings and the link's counts."""
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    link = EdgeLink(host, port, reply_timeout_s=float(job.get("reply_timeout_s", 10.0))).start()
    link.wait_connected(float(job.get("connect_timeout_s", 60.0)))  # the cloud may still be starting
    outages = _Outages(job.get("outages", []), link)
    predictions = np.zeros(len(stream), dtype=np.int64)
    uploaded = np.zeros(len(stream), dtype=bool)
    applied = np.zeros(len(stream), dtype=np.int64)  # which upload's state served each sample (0: none yet)
    batch_s, waited_s, version = [], [], 0
    progress_file = os.environ.get("EDGEPOOL_ADAPT_PROGRESS")
    started = time.perf_counter()
    interval = float(job.get("batch_interval_s", 0.0))  # the stream's arrival pace (0: as fast as served)
    for b, (lo, hi) in enumerate(stream.batches(int(job["batch"]))):
        if interval:
            time.sleep(max(0.0, started + b * interval - time.perf_counter()))
        outages.before(b)
        t0 = time.perf_counter()
        served = edge.serve(stream.images[lo:hi])
        predictions[lo:hi], uploaded[lo:hi], applied[lo:hi] = served.predictions, served.uploaded, version
        t1 = time.perf_counter()
        if len(served.upload):
            seq = link.upload(encode_upload(served.upload))
            if link.healthy:
                link.wait_reply(seq)
        newest = link.newest_state()
        if newest is not None and newest[0] > version:
            version = newest[0]
            edge.apply(decode_state(newest[1]))
        batch_s.append(t1 - t0)
        waited_s.append(time.perf_counter() - t1)
        if progress_file:
            Path(progress_file).write_text(str(b + 1))
    outages.before(len(batch_s))  # end of the stream: the link comes back up for the goodbye
    link.close(flush_timeout_s=float(job.get("flush_timeout_s", 30.0)))
    return {"role": "edge", "predictions": predictions.tolist(), "uploaded": uploaded.tolist(),
            "applied_version": applied.tolist(), "serve_s": batch_s, "link_wait_s": waited_s,
            "wall_s": time.perf_counter() - started, "link": vars(link.stats), "outage_how": outages.how}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_file")
    args = parser.parse_args(argv)
    job_path = Path(args.job_file)
    job = read_job(job_path)
    rank = int(os.environ.get("RANK", "0"))

    import torch

    from edgepool.testbed.worker import apply_cpu_quota

    torch.set_num_threads(1)
    side, stream = build_side(job, rank)  # before the quota: loading and corrupting are not what is measured
    quota_applied = apply_cpu_quota()
    result = run_cloud(job, side) if rank == CLOUD else run_edge(job, side, stream)
    write_result(job_path.parent, rank, {**result, "quota_applied": quota_applied, "pid": os.getpid()})


if __name__ == "__main__":
    main()
