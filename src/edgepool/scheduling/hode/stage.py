"""Hode's real stage: the per-region CNN run in one process per node, so simulated and measured latency meet.

Each node is a plain local process (`worker`, started through the worker harness with `LocalLauncher`)
that runs the real CNN over its regions with one thread. This host's core is slower than the fleet's fastest
node, so the stage replays the simulated frames `dilation` = (fastest node's FLOP/s) / (host's measured FLOP/s)
times slower: a node's speed is emulated as a CPU share of the core in proportion to its catalog speed (the
fastest gets a whole core; a duty cycle in the worker, not a cgroup quota), and its link time and the other work
queued ahead of its region (both taken from the simulated frame: that frame's bandwidth and queue) are held as
sleeps, dilated alike (no tc). Measured frame latency / dilation is then directly comparable with the simulated
frame latency of the same frame under the same split. Frames are spaced so the stage's own frames never queue.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgepool.scheduling.hode.env import HodeEnv
from edgepool.scheduling.hode.regions import split_regions

MODULE = "edgepool.scheduling.hode.worker"


def host_flops(model, block: int, flops_per_px: float, blocks: int = 64, repeats: int = 5) -> float:
    """This host's FLOP/s for the CNN over a batch of blocks, one thread (the fastest of `repeats`)."""
    from edgepool.local_device import torch_threads

    x = torch.rand(blocks, 1, block, block)
    best = float("inf")
    with torch_threads(1), torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return blocks * block * block * flops_per_px / best


def run_real_stage(env: HodeEnv, video, masks: np.ndarray, rows: dict[str, dict[int, dict]], model,
                   frames: list[int], *, timeout_s: float = 240.0, max_gap_s: float = 3.0) -> dict:
    """Replay `frames` of `video` under each policy's simulated frames (policy -> frame -> rollout row with
    shares, bw_factor, queue_s, latency_s) on node processes; measured vs simulated frame latency per policy."""
    from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers
    from edgepool.testbed.launcher import LocalLauncher

    fleet, b, k = env.fleet, env.block, env.k
    speeds = fleet.speeds[env.nodes]
    cpu_share = speeds / speeds.max()
    flops = host_flops(model, b, env.flops_per_px)
    dilation = float(speeds.max() / flops)
    names = list(rows)
    blocks = np.stack([np.stack([split_regions(masks[t], rows[p][t]["shares"]).blocks for t in frames])
                       for p in names])  # (R, F, k, gh, gw)
    counts = blocks.reshape(len(names), len(frames), k, -1).sum(-1)
    link = [[[dilation * fleet.transfer_s(env.cam, n, c * env.block_bytes / f) if c else 0.0
              for n, c, f in zip(env.nodes, counts[ri, fi], rows[p][t]["bw_factor"])]
             for fi, t in enumerate(frames)] for ri, p in enumerate(names)]
    queue = [[[dilation * q for q in rows[p][t]["queue_s"]] for t in frames] for p in names]
    gap = [min(max_gap_s, 0.3 + 1.5 * dilation * max(rows[p][t]["latency_s"] for p in names)) for t in frames]
    per_run = float(sum(gap))
    starts = [[ri * per_run + float(sum(gap[:fi])) for fi in range(len(frames))] for ri in range(len(names))]
    folder = Path(tempfile.mkdtemp(prefix="edgepool-hode-"))
    try:
        np.savez(folder / "data.npz", frames=video.frames[frames], blocks=blocks)
        torch.save(model.state_dict(), folder / "weights.pt")
        job = WorkerJob.create({
            "data": str(folder / "data.npz"), "weights": str(folder / "weights.pt"), "block": b,
            "shares": cpu_share.tolist(), "starts": starts, "link_s": link, "queue_s": queue}, folder / "job")
        started = time.monotonic()
        with LocalLauncher() as local:
            results = run_workers(local, MODULE, job, [fleet.names[n] for n in env.nodes], timeout_s=timeout_s)
            where = describe_launcher(local)
        run_s = time.monotonic() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {}
    for ri, p in enumerate(names):
        m = np.array([max(r["runs"][ri][fi]["finish_s"] for r in results) for fi in range(len(frames))]) / dilation
        s = np.array([rows[p][t]["latency_s"] for t in frames])
        done = [r["runs"][ri][fi] for r in results for fi in range(len(frames)) if r["runs"][ri][fi]["blocks"]]
        out[p] = {"measured_latency_s": m.round(5).tolist(), "simulated_latency_s": s.round(5).tolist(),
                  "measured_latency_s_mean": float(m.mean()), "simulated_latency_s_mean": float(s.mean()),
                  "measured_over_simulated": float(m.mean() / s.mean()),
                  "cnn_s_per_block_measured": float(np.mean([d["compute_s"] / d["blocks"] for d in done])),
                  "cnn_s_per_block_model": float(env.block_flops / flops),
                  "recognize_s_per_region_mean": float(np.mean([d["recognize_s"] for d in done]))}
    return {"policies": out, "frames": frames, "host_flops_per_s": flops, "dilation": dilation,
            "cpu_share": dict(zip([fleet.names[n] for n in env.nodes], cpu_share.round(4).tolist())),
            "where": {**where, "run_s": round(run_s, 2),
                      "time": f"the stage runs {dilation:.2f}x slower than the simulated world; measured latencies "
                              f"are divided by that factor",
                      "link": "emulated by sleep (latency + bytes / (nominal bandwidth x the frame's factor))",
                      "queue": "the simulated frame's wait behind other work, held as a sleep (not real work)",
                      "cpu": "duty cycle per node: compute c seconds, then idle c (1/share - 1)",
                      "not_in_latency": "the recognition after the CNN pass (thresholds, components, crops), "
                                        "timed apart as recognize_s_per_region_mean at full host speed"}}
