"""One fog node (or the cloud) of a distributed GNN inference: `python -m edgepool.graph.fog_worker JOB.json`.

Started by `edgepool.graph.fog.run_fog` through the worker harness, one process per node (rank = position
in the plan's nodes). It loads the graph and the trained model, builds its `PartitionView` of every plan,
switches its CPU quota on, and then for each plan runs `FrameSteps` with the payloads travelling over
`torch.distributed` (gloo point-to-point, tagged by frame and phase):
- latency: each frame starts and ends at a barrier, so the time covers the slowest node and every transfer;
- throughput: frames back to back with no barrier between them (a node that is done starts the next frame's
  sends), timed from the first start to the last end.
Results: `rank<R>.json` (times, bytes) and `out-<plan>-rank<R>.pt` (frame 0's rows of the owned vertices).
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from edgepool.graph.compression import Codec
from edgepool.graph.halo import FrameSteps, Payloads, build_views
from edgepool.graph.models import GNN
from edgepool.graph.partition import FogPlan
from edgepool.runtime.harness import read_job, write_result


class Exchange:
    """Point-to-point payloads between ranks; counts the bytes this rank sends."""

    def __init__(self):
        self.sent_bytes = 0

    def __call__(self, outgoing: Payloads, expect: dict[int, int], tag: int) -> Payloads:
        works = []
        for peer, payload in outgoing.items():
            works.append(dist.isend(payload, dst=peer, tag=tag))
            self.sent_bytes += payload.numel()
        received = {peer: torch.empty(size, dtype=torch.uint8) for peer, size in expect.items()}
        works += [dist.irecv(buf, src=peer, tag=tag) for peer, buf in received.items()]
        for work in works:
            work.wait()
        return received


def expected_sizes(steps: FrameSteps, widths: list[int]) -> list[dict[int, int]]:
    """Bytes to receive from each peer in each exchange of a frame (raw rows, then halo rows before each later
    layer): the same every frame, so computed once, off the timed path."""
    return [steps.raw_recv_bytes(widths[0])] + [steps.halo_recv_bytes(w) for w in widths[1:]]


def run_frame(steps: FrameSteps, x: torch.Tensor, exchange: Exchange, frame: int,
              expect: list[dict[int, int]]) -> list[float]:
    """One inference on this node; returns the seconds of each phase: [raw exchange, take raw, layer 0, then
    per later layer: halo exchange, take halo, layer]. `expect`: `expected_sizes`, one entry per layer."""
    layers = len(expect)
    base = frame * layers
    phases = []

    def timed(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        phases.append(time.perf_counter() - t0)
        return out

    got = timed(lambda: exchange(steps.raw_payloads(x), expect[0], base))
    timed(steps.take_raw, x, got)
    timed(steps.layer, 0)
    for i in range(1, layers):
        got = timed(lambda: exchange(steps.halo_payloads(), expect[i], base + i))
        timed(steps.take_halo, got)
        timed(steps.layer, i)
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_file")
    args = parser.parse_args(argv)
    job_path = Path(args.job_file)
    job = read_job(job_path)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    graph = torch.load(job["graph"])  # x, edge_index, edge_weight, degrees
    spec = job["model"]
    model = GNN(spec["kind"], spec["in_dim"], spec["hidden"], spec["out_dim"], spec["layers"])
    model.load_state_dict(torch.load(job["weights"]))
    model.eval()
    widths = model.dims[:-1]
    runs = []
    for run in job["runs"]:
        plan = FogPlan.from_dict(run["plan"])
        view = build_views(graph["edge_index"], graph["edge_weight"], plan)[rank]
        codec = Codec(run["codec"]["mode"], run["codec"]["high_degree"])
        runs.append((run["name"], FrameSteps(model, view, codec, graph["degrees"]), view))

    from edgepool.testbed.worker import apply_cpu_quota

    quota_applied = apply_cpu_quota()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=timedelta(seconds=float(job.get("timeout_s", 600))))
    x = graph["x"]
    records = []
    try:
        for name, steps, view in runs:
            exchange = Exchange()
            expect = expected_sizes(steps, widths)
            frame = 0
            for _ in range(max(job["warmup"], 1)):  # frame 0's output is what the host checks
                dist.barrier()
                run_frame(steps, x, exchange, frame, expect)
                frame += 1
            torch.save(steps.rows, job_path.parent / f"out-{name}-rank{rank}.pt")
            exchange.sent_bytes = 0
            latencies, phases = [], []
            for _ in range(job["latency_frames"]):
                dist.barrier()
                t0 = time.perf_counter()
                phases.append(run_frame(steps, x, exchange, frame, expect))
                dist.barrier()
                latencies.append(time.perf_counter() - t0)
                frame += 1
            bytes_per_frame = exchange.sent_bytes / max(job["latency_frames"], 1)
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(job["throughput_frames"]):
                run_frame(steps, x, exchange, frame, expect)
                frame += 1
            dist.barrier()
            stream_s = time.perf_counter() - t0
            records.append({"name": name, "latencies_s": latencies, "phases_s": phases,
                            "bytes_sent_per_frame": bytes_per_frame, "stream_s": stream_s,
                            "stream_frames": job["throughput_frames"], "view": view.describe()})
        dist.barrier()
    finally:
        dist.destroy_process_group()
    write_result(job_path.parent, rank, {"rank": rank, "device": os.environ.get("EDGEPOOL_DEVICE", ""),
                                         "runs": records, "quota_applied": quota_applied, "pid": os.getpid()})


if __name__ == "__main__":
    main()
