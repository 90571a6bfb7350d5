"""Putting a served LLM together: a checkpoint, a plan, and one engine, in this process or across a pool.

`local_engine` runs the checkpoint in this process (`ModelExecutor`); `pooled_engine` runs it as the plan's
pipeline stages, one process per device started by a launcher (`PooledExecutor`), and re-plans with
`plan_llm` on the survivors when a device leaves. Both return the same `Engine` (scheduler, paged block
manager, KV policies), with the checkpoint's own tokenizer and chat template.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from edgepool.cluster import Cluster
from edgepool.llm.checkpoint import Checkpoint
from edgepool.llm.planner import (MEMORY_HEADROOM, RUNTIME_OVERHEAD_BYTES, LLMWorkload, plan_llm,
                                  stage_layer_ranges)
from edgepool.llm.pool import PooledExecutor, PoolOptions, Stage
from edgepool.llm.profile import LLMProfile
from edgepool.llm.tokenizer import ChatTokenizer
from edgepool.plan import Plan
from edgepool.serving.engine import ATTENTION_NAME, Engine, EngineConfig

MAX_BLOCKS = 512  # per stage: enough for 16 requests of 512 tokens in blocks of 16


def plan_stages(plan: Plan) -> list[Stage]:
    """The runtime's stages of an LLM plan (one device each, transformer-layer ranges)."""
    return [Stage(s.devices[0], a, b) for s, (a, b) in zip(plan.stages, stage_layer_ranges(plan))]


def stage_blocks(profile: LLMProfile, cluster: Cluster, stage: Stage, first: bool, last: bool,
                 block_size: int) -> int:
    """KV blocks the stage's device can hold beside its weights and the runtime (its own budget)."""
    weights = (stage.end - stage.first) * profile.layer_param_bytes + (profile.embed_bytes if first else 0) \
        + (profile.head_bytes if last else 0)
    free = cluster.devices[stage.device].memory_bytes * MEMORY_HEADROOM - RUNTIME_OVERHEAD_BYTES - weights
    per_block = block_size * (stage.end - stage.first) * profile.kv_bytes_per_token_layer
    return max(0, int(free // per_block)) if per_block else MAX_BLOCKS


def pool_blocks(profile: LLMProfile, cluster: Cluster, stages: list[Stage], block_size: int,
                cap: int = MAX_BLOCKS) -> int:
    """One block table serves every stage, so the pool has the smallest stage budget (capped at `cap`)."""
    budgets = [stage_blocks(profile, cluster, s, i == 0, i == len(stages) - 1, block_size)
               for i, s in enumerate(stages)]
    return max(2, min([cap, *budgets]))


def engine_config(checkpoint: Checkpoint, num_blocks: int, *, policy: str = "vllm", block_size: int = 16,
                  max_batch_requests: int = 32, max_waiting: int = 256) -> EngineConfig:
    return EngineConfig(model=checkpoint.name, policy=policy, num_blocks=num_blocks, block_size=block_size,
                        num_host_blocks=num_blocks, max_batch_requests=max_batch_requests,
                        max_batch_tokens=num_blocks * block_size, max_waiting=max_waiting)


def local_engine(checkpoint: Checkpoint, *, num_blocks: int = 256, **options) -> Engine:
    """The checkpoint served by this process alone."""
    model = LlamaForCausalLM.from_pretrained(checkpoint.folder, dtype=torch.float32, local_files_only=True).eval()
    model.set_attn_implementation(ATTENTION_NAME)
    return Engine(engine_config(checkpoint, num_blocks, **options), model=model,
                  tokenizer=ChatTokenizer.from_checkpoint(checkpoint))


def pooled_engine(checkpoint: Checkpoint, profile: LLMProfile, cluster: Cluster, plan: Plan, launcher, *,
                  workload: LLMWorkload | None = None, block_size: int = 16, max_blocks: int = MAX_BLOCKS,
                  threads: dict[str, int] | None = None, work_dir: str | Path | None = None, **options) -> Engine:
    """The checkpoint served by the plan's stages on `launcher`; re-planned on the survivors when one leaves."""
    workload = workload or LLMWorkload()

    def replan(devices: list[str]) -> list[Stage]:
        return plan_stages(plan_llm(profile, cluster, workload, devices=devices))

    pool = PooledExecutor(checkpoint.folder, plan_stages(plan), launcher,
                          num_blocks=lambda stages: pool_blocks(profile, cluster, stages, block_size, max_blocks),
                          replan=replan, options=PoolOptions(block_size=block_size, num_host_blocks=max_blocks,
                                                             threads=threads or {}),
                          work_dir=work_dir, model=checkpoint.name)
    try:
        return Engine(engine_config(checkpoint, pool.num_blocks, block_size=block_size, **options),
                      executor=pool, model_config=checkpoint.config(),
                      tokenizer=ChatTokenizer.from_checkpoint(checkpoint))
    except BaseException:
        pool.close()
        raise


def planning_view(checkpoint: Checkpoint, cluster: Cluster, launcher) -> tuple[LLMProfile, Cluster, str]:
    """The profile and cluster the planner should see on `launcher`, and what they rest on.

    On the emulated testbed the devices are fractions of one core of this host: the plan is made for the
    cluster the testbed realizes, with the checkpoint's layer and head times measured on that core. Elsewhere
    (local processes, real hosts) the plan uses the cluster spec's devices and the roofline cost model."""
    profile = LLMProfile.from_pretrained(checkpoint.folder, name=checkpoint.name)
    if getattr(launcher, "kind", "") != "testbed":
        return profile, cluster, "cluster spec devices, roofline cost model"
    from edgepool.llm.profile import measure_host
    from edgepool.testbed.testbed import host_core_device

    host = host_core_device()
    measured = measure_host(checkpoint.folder, profile, host=host)
    return measured, launcher.emulated_cluster(host), "emulated testbed devices, layer times measured on one host core"
