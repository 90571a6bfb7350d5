"""One device of collaborative PAC: `python -m edgepool.finetune.collaborative_worker JOB.json`, started by
`collaborative.run_collaborative` through the worker harness (local processes or the testbed's devices).

It builds the PAC fine-tuner (on the testbed at full speed, then it switches its CPU quota on), fills its
activation cache through the forward-only pipeline (phase 1), trains its replica of the adapters on its
data share with the gradients summed by all-reduce (phase 2), and writes `rank<R>.json`; rank 0 also
evaluates and saves the adapters as `adapters.pt` in the job folder.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from edgepool.finetune.collaborative import CollaborativeLayout, fill_pipeline
from edgepool.finetune.data import batch_schedule
from edgepool.finetune.methods import FinetuneConfig, Finetuner
from edgepool.runtime.harness import read_job, write_result
from edgepool.testbed.worker import apply_cpu_quota


def main(job_path: str) -> None:
    job = read_job(job_path)
    config = FinetuneConfig(**job["config"])
    layout = CollaborativeLayout(**{**job["layout"], "stages": [tuple(s) for s in job["layout"]["stages"]]})
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        result = run_rank(config, layout, dist.get_rank(), Path(job_path).parent)
        write_result(Path(job_path).parent, result["rank"], result)
    finally:
        dist.destroy_process_group()


def run_rank(config: FinetuneConfig, layout: CollaborativeLayout, rank: int, out_dir: Path) -> dict:
    """Both phases on this rank; what it measured."""
    tuner = Finetuner(replace(config, method="pac", threads=1))
    if not tuner.backbone.supports_stages:
        raise NotImplementedError(f"{config.model}: collaborative PAC needs a BERT-family encoder")
    apply_cpu_quota()  # no-op under the local launcher
    t0 = time.perf_counter()
    cached = fill_pipeline(tuner, layout, rank)
    dist.barrier()
    fill_s = time.perf_counter() - t0
    epochs = []
    for epoch in range(1, config.epochs + 1):
        t = time.perf_counter()
        loss = torch.zeros(1)
        for parts in batch_schedule(len(tuner.task.train), config.batch_size, epoch, config.seed, layout.shares):
            loss += tuner.train_step(parts[rank], reduce_grads=_all_reduce,
                                     global_batch_size=sum(len(p) for p in parts))
        dist.all_reduce(loss)
        epochs.append({"epoch": epoch, "train_time_s": time.perf_counter() - t, "loss_sum": float(loss),
                       "backbone_forward_samples": 0})
    dist.barrier()
    result = {"rank": rank, "device": layout.devices[rank], "stage_states": layout.stages[rank],
              "share_size": len(layout.shares[rank]), "cached_samples": cached, "fill_time_s": fill_s,
              "epochs": epochs, "cache": tuner.cache.stats().to_dict()}
    if rank == 0:
        result["accuracy"] = tuner.evaluate()
        torch.save(tuner.adapters.state_dict(), out_dir / "adapters.pt")
    tuner.cache.close()
    return result


def _all_reduce(grads: list[torch.Tensor]) -> None:
    """Sum the gradients over every rank, as one flat tensor."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


if __name__ == "__main__":
    main(sys.argv[1])
