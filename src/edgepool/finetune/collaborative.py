"""Collaborative PAC over a pool of devices, one process per device, over `torch.distributed` (gloo).

Phase 1 (cache fill): the frozen backbone runs once per sample as a forward-only pipeline. Device k holds a
contiguous range of states (stage k); every micro-batch enters at stage 0, each stage sends its last state
to the next stage and the states it produced to the micro-batch's owner, which caches them. Each device owns
a data share (contiguous, proportional to its speed) and ends with the states of exactly its share.
Phase 2 (training): every device trains a replica of the parallel adapters from its own cache, data
parallel: per step each device takes its slice of the global batch and the gradients are summed with
all-reduce, so the result equals single-process PAC on the same batches (`Finetuner.run(shares=...)`).

Stage boundaries come from a planner's `Plan` when one is given, else they and the data shares are
proportional to each device's fp32 peak from `edgepool.cluster`. One worker per device
(`collaborative_worker`) starts through the worker harness and a launcher: local processes run at this
machine's speed (the split is the cluster's, no throttling); on the testbed each device runs in its cgroup
and network namespace, with its CPU quota and shaped links.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from edgepool.errors import SpecError
from edgepool.finetune.data import pad_batch
from edgepool.finetune.methods import FinetuneConfig, Finetuner
from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers
from edgepool.runtime.launch import started_launcher

TAG_PIPE, TAG_STATES = 1, 2
WORKER = "edgepool.finetune.collaborative_worker"


def proportional_split(total: int, weights: list[float], minimum: int = 1) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of `total` items, sizes proportional to `weights`, each >= minimum."""
    n = len(weights)
    if n < 1 or total < n * minimum:
        raise SpecError(field="devices", value=n, accepted=f"1 to {total // max(1, minimum)} devices for {total} items")
    if any(w <= 0 for w in weights):
        raise SpecError(field="device speeds", value=weights, accepted="positive numbers")
    sizes = [minimum] * n
    spare = total - n * minimum
    shares = [w / sum(weights) * spare for w in weights]
    for i in range(n):
        sizes[i] += int(shares[i])
    order = sorted(range(n), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def cluster_speeds(cluster, world_size: int | None = None) -> tuple[list[str], list[float]]:
    """The first `world_size` devices and their fp32 peaks (`costmodel.device_speed`, peak only)."""
    from edgepool.costmodel import device_speed

    names = list(cluster.devices)[: world_size or len(cluster.devices)]
    return names, [device_speed(cluster, n, peak_only=True) for n in names]


@dataclass
class CollaborativeLayout:
    devices: list[str]
    speeds: list[float]
    stages: list[tuple[int, int]]  # states per device
    shares: list[list[int]]  # training sample indices per device

    @classmethod
    def build(cls, devices: list[str], speeds: list[float], num_states: int, n_train: int) -> "CollaborativeLayout":
        stages = proportional_split(num_states, speeds)
        shares = [list(range(a, b)) for a, b in proportional_split(n_train, speeds)]
        return cls(devices, speeds, stages, shares)

    @classmethod
    def from_plan(cls, plan, num_states: int, n_train: int, speeds: dict[str, float] | None = None
                  ) -> "CollaborativeLayout":
        """Stage boundaries from a planner's `edgepool.plan.Plan`: one pipeline, one device per stage, its
        layer indices counting backbone states (embeddings = 0). Data shares follow `speeds` when given,
        otherwise each stage's layer count (a balanced plan gives faster devices more layers)."""
        pipes = plan.pipelines
        if len(pipes) != 1 or any(len(st.devices) != 1 for st in pipes[0].stages):
            raise SpecError(field="plan.pipelines", value=f"{len(pipes)} pipeline(s)",
                            accepted="one pipeline with one device per stage (a pure pipeline)")
        stages = [tuple(st.layers) for st in pipes[0].stages]
        if stages[0][0] != 0 or stages[-1][1] != num_states or any(a[1] != b[0] for a, b in zip(stages, stages[1:])):
            raise SpecError(field="plan.pipelines[0].stages", value=stages,
                            accepted=f"contiguous ranges covering the backbone's {num_states} states")
        devices = [st.devices[0] for st in pipes[0].stages]
        weights = [speeds[d] for d in devices] if speeds and all(d in speeds for d in devices) else [float(b - a) for a, b in stages]
        shares = [list(range(a, b)) for a, b in proportional_split(n_train, weights)]
        return cls(devices, weights, stages, shares)


def fill_pipeline(tuner: Finetuner, layout: CollaborativeLayout, rank: int) -> int:
    """Phase 1 on this rank; returns how many samples' states this rank cached."""
    task, bb = tuner.task, tuner.backbone
    start, end = layout.stages[rank]
    world = len(layout.stages)
    bs = tuner.config.batch_size
    pending_sends, pending_states = [], []
    for owner, share in enumerate(layout.shares):
        order = sorted(share, key=lambda i: len(task.train.input_ids[i]))
        for lo in range(0, len(order), bs):
            chunk = order[lo: lo + bs]
            ids, mask = pad_batch([task.train.input_ids[i] for i in chunk], task.pad_id)
            if start == 0:
                x = ids
            else:
                x = torch.empty(len(chunk), ids.shape[1], bb.hidden_size)
                dist.recv(x, src=rank - 1, tag=TAG_PIPE)
            produced = torch.stack(bb.run_stage(start, end, x, mask))
            if rank < world - 1:
                pending_sends.append((dist.isend(produced[-1].contiguous(), dst=rank + 1, tag=TAG_PIPE), produced))
            if owner != rank:
                pending_sends.append((dist.isend(produced, dst=owner, tag=TAG_STATES), produced))
                continue
            parts = {}
            for stage, (a, b) in enumerate(layout.stages):
                if stage == rank:
                    parts[stage] = (None, produced)
                else:
                    buf = torch.empty(b - a, len(chunk), ids.shape[1], bb.hidden_size)
                    parts[stage] = (dist.irecv(buf, src=stage, tag=TAG_STATES), buf)
            pending_states.append((chunk, parts))
    cached = 0
    for chunk, parts in pending_states:
        for work, _ in parts.values():
            if work is not None:
                work.wait()
        states = torch.cat([parts[s][1] for s in sorted(parts)])
        for row, i in enumerate(chunk):
            tuner.cache.put(task.train.key_offset + i, states[:, row, : len(task.train.input_ids[i])])
            cached += 1
    for work, _ in pending_sends:
        work.wait()
    tuner.backbone_forward_samples += cached
    return cached


def run_collaborative(config: FinetuneConfig, devices: list[str], speeds: list[float],
                      out_dir: str | None = None, plan=None, launcher="local", cluster=None,
                      timeout_s: float = 3600.0) -> dict:
    """Start one worker per device (`collaborative_worker`, through the worker harness) and run collaborative
    PAC; returns a summary (rank 0's adapters are saved as `adapters.pt` in `out_dir`). With a `plan`, its
    stages decide the split (see `from_plan`). `launcher`: "local", "testbed" (the devices of `cluster`, in
    their cgroups and namespaces; falls back to local without root) or a started launcher."""
    config = replace(config, method="pac").validate()
    layout = _layout(config, devices, speeds, plan)
    out = Path(out_dir or tempfile.mkdtemp(prefix="edgepool-collab-"))
    job = WorkerJob.create({"config": asdict(config), "layout": asdict(layout)}, out)
    t0 = time.perf_counter()
    with started_launcher(launcher, cluster) as workers:
        ranks = run_workers(workers, WORKER, job, layout.devices, timeout_s,
                            env={"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
        where = _where(workers)
    wall = time.perf_counter() - t0
    return {"method": "pac-collaborative", "layout": asdict(layout) | {"shares": [len(s) for s in layout.shares]},
            "wall_time_s": wall, "fill_time_s": max(r["fill_time_s"] for r in ranks),
            "epoch_times_s": [max(r["epochs"][e]["train_time_s"] for r in ranks) for e in range(config.epochs)],
            "final_accuracy": ranks[0]["accuracy"], "ranks": ranks, "adapters_path": str(out / "adapters.pt"),
            "where": where}


def _layout(config: FinetuneConfig, devices: list[str], speeds: list[float], plan) -> CollaborativeLayout:
    from edgepool.finetune.backbone import load_backbone
    from edgepool.finetune.methods import load_task

    backbone = load_backbone(config.model, seed=config.seed)
    if not backbone.supports_stages:
        raise SpecError(field="model", value=config.model, accepted="a BERT-family encoder (all-minilm-l6-v2, bert-tiny)",
                        hint="collaborative PAC splits the backbone into pipeline stages")
    n_train = len(load_task(config, backbone).train)
    if plan is not None:
        return CollaborativeLayout.from_plan(plan, backbone.num_states, n_train, dict(zip(devices, speeds)))
    return CollaborativeLayout.build(devices, speeds, backbone.num_states, n_train)


def _where(launcher) -> str:
    info = describe_launcher(launcher)
    if info.get("launcher") == "testbed":
        return ("measured on the emulated testbed: one process per device in its cgroup and network namespace "
                "(CPU quota, shaped links), gloo")
    if info.get("launcher") == "pool":
        return (f"measured on the pool {info.get('coordinator', '')}: one process per device, started by its agent, "
                "gloo over the real links")
    where = "measured: one process per device on this machine, gloo over loopback"
    if info.get("fallback_reason"):
        where += f" (testbed unavailable: {info['fallback_reason']})"
    return where
