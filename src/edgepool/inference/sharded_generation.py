"""Token-by-token greedy generation over an inference plan, with a KV cache on every device.

With a layer-pipeline plan (stages of one device each, contiguous layer ranges chosen by memory and speed,
see `planner.plan_generation`) this is EdgeShard/exo-style layer sharding: each device keeps the KV cache of
its own layers only; the hidden state of the newest token travels down the pipeline, the last device picks the
token and sends it back to the first, which streams it (`on_token`) and feeds it in again. Tensor-parallel
stages work too: each device then caches the keys and values of its own heads.

Every rank runs exactly `max_new_tokens` steps (no early stop at an end-of-sequence token, so that all
ranks agree on the number of steps without an extra message per token).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.distributed as dist

from edgepool.inference.collectives import broadcast_from
from edgepool.inference.executor import TOKEN_TAG, InferenceProgram


@torch.no_grad()
def generate(program: InferenceProgram, prompt: torch.Tensor, max_new_tokens: int,
             on_token: Callable[[int, int, float], None] | None = None) -> dict:
    """Greedy generation of `max_new_tokens` after `prompt` (1, P) (known to every first-stage member).

    Returns, on the first stage's leader, {"tokens": [...], "step_s": [...]} (the time of each step as seen
    there: step 0 is the prefill, the time to first token); on other ranks the same keys, empty.
    """
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt must have shape (1, length), got {tuple(prompt.shape)}")
    program.set_cache(True)
    tokens: list[int] = []
    step_s: list[float] = []
    ids = prompt
    first = program.rank == program.first_leader
    in_first_stage = program.stage == 0
    for step in range(max_new_tokens):
        start = time.perf_counter()
        out = program.forward(ids if in_first_stage else None, 1, ids.shape[1], last_only=True)
        token = None
        if program.is_output_rank:
            token = out[:, -1].argmax(-1).reshape(1, 1)
            if not first:
                dist.send(token, program.first_leader, tag=TOKEN_TAG)
        elif first:
            token = torch.empty(1, 1, dtype=torch.long)
            dist.recv(token, program.last_leader, tag=TOKEN_TAG)
        if in_first_stage:
            token = broadcast_from(program.comm, token, (1, 1), torch.long)
        if first:
            elapsed = time.perf_counter() - start
            tokens.append(int(token))
            step_s.append(elapsed)
            if on_token is not None:
                on_token(step, int(token), elapsed)
        ids = token if in_first_stage else ids.new_empty(1, 1)
    program.set_cache(False)
    return {"tokens": tokens, "step_s": step_s}


@torch.no_grad()
def reference_greedy(hf_model, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Single-device greedy generation with the unmodified `transformers` model (no cache: the plain recompute)."""
    ids = prompt
    out = []
    for _ in range(max_new_tokens):
        logits = hf_model(input_ids=ids).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(token))
        ids = torch.cat([ids, token], dim=1)
    return out
