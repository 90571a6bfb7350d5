"""One device of a pooled LLM: `python -m edgepool.llm.stage_worker JOB.json`, started by a launcher.

The job names the checkpoint folder, every stage's layer range (rank = stage index), the KV-cache blocks and
the coordinator's store. The worker loads only its stage, allocates its KV blocks, says it is ready, then
loops: read the step's `StepMessage` from the store, apply the block copies to its cache, and for each
micro-batch receive the hidden states from the previous stage (or embed the tokens), run its layers and send
them on (or, on the last stage, sample and answer with the tokens). Micro-batches follow each other, so
while stage 1 works on micro-batch 1, stage 0 already computes micro-batch 2.
"""
from __future__ import annotations

import datetime
import os
import pickle

import torch
import torch.distributed as dist

from edgepool.inference.worker import run_as_main
from edgepool.llm.messages import StepMessage, ready_key, step_key, tokens_key
from edgepool.llm.stage import StageModel
from edgepool.runtime.harness import read_job
from edgepool.runtime.netif import choose_gloo_interface
from edgepool.serving.engine import PagedKVCache, sample_tokens


def _checkpoint_folder(job: dict) -> str:
    """The checkpoint on this device: the coordinator's folder when this device has it (one machine, a shared
    disk), else the checkpoint the name resolves to here (a short name: converted once from its package)."""
    if os.path.isdir(job["folder"]) or not job.get("model"):
        return job["folder"]
    from edgepool.llm.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(job["model"], progress=False).folder)


def main(job_path: str) -> None:
    job = read_job(job_path)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = os.environ.get("EDGEPOOL_DEVICE", job["devices"][rank])
    torch.set_num_threads(int(job.get("threads", {}).get(device, 1)))
    generation = job["generation"]
    store = dist.TCPStore(job["store_host"], job["store_port"], is_master=False,
                          timeout=datetime.timedelta(seconds=job.get("idle_timeout_s", 86400)))
    if world > 1:
        choose_gloo_interface()
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=job.get("timeout_s", 120)))
    a, b = job["stages"][rank]
    dtype = getattr(torch, job.get("dtype", "float32"))
    stage = StageModel.load(_checkpoint_folder(job), range(a, b), first=rank == 0, last=rank == world - 1, dtype=dtype)
    cache = PagedKVCache(stage.config, job["num_blocks"], job["block_size"], job["num_host_blocks"], dtype,
                         layers=stage.layer_range)
    from edgepool.testbed.worker import apply_cpu_quota

    apply_cpu_quota()  # on the testbed: the device's speed from here on (loading ran at full speed)
    store.set(ready_key(generation, rank), str(stage.weight_bytes + cache.bytes_per_block * job["num_blocks"]))
    serve(stage, cache, store, generation, rank, world)


def serve(stage: StageModel, cache: PagedKVCache, store: dist.TCPStore, generation: int, rank: int,
          world: int) -> None:
    hidden_size = stage.config.hidden_size
    step = 0
    while True:
        message: StepMessage = pickle.loads(store.get(step_key(generation, step)))
        if message.stop:
            return
        cache.swap_out(message.swap_out)
        cache.swap_in(message.swap_in)
        tokens: list[int] = []
        sends = []
        for inputs in message.microbatches:
            positions = torch.tensor([inputs.positions])
            if stage.first:
                x = torch.tensor([inputs.ids])
            else:  # (1, T, hidden) from the previous stage
                x = torch.empty(1, len(inputs.ids), hidden_size, dtype=stage.layers[0].mlp.up_proj.weight.dtype)
                dist.recv(x, src=rank - 1)
            hidden = stage(x, positions, inputs.paged(cache))
            if stage.last:
                tokens.extend(sample_tokens(stage.logits(hidden, inputs.last), inputs))
            else:
                hidden = hidden.contiguous()
                sends.append((dist.isend(hidden, dst=rank + 1), hidden))  # keep the tensor alive until sent
        for work, _ in sends:
            work.wait()
        if stage.last:
            store.set(tokens_key(generation, step), pickle.dumps(tokens))
        step += 1


if __name__ == "__main__":
    run_as_main(main)
