"""Process groups and messages of a plan: gradient buckets per set of ranks, and row transfers between stages.

A parameter lives on every device of every stage (in every pipeline) whose blocks use it. Its gradient is
summed over exactly those ranks; parameters with the same rank set share one flat bucket and one
all-reduce over one subgroup. That covers data parallelism inside a stage group, data parallelism across
pipelines (even when pipelines cut the model at different blocks) and weights tied across stages (GPT-2's
embedding and head). Each device scales its loss by its rows / global batch, so the summed gradient is
the gradient of the mean loss over the global batch: the all-reduce is weighted by shares.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from edgepool.profile import parameter_blocks
from edgepool.runtime.layout import Layout


@dataclass(frozen=True)
class GradientBucket:
    ranks: tuple[int, ...]
    params: tuple[str, ...]  # canonical names in the full model (`blocks.named_parameters()`)


def gradient_buckets(blocks: nn.Sequential, layout: Layout) -> list[GradientBucket]:
    """Buckets in one global order, identical on every rank (process groups must be created in order)."""
    block_ranks: list[set[int]] = [set() for _ in range(len(blocks))]
    for pipe in layout.plan.pipelines:
        for stage in pipe.stages:
            ranks = {layout.ranks[d] for d in stage.devices}
            for b in range(*stage.layers):
                block_ranks[b] |= ranks
    by_ranks: dict[tuple[int, ...], list[str]] = {}
    for name, used in parameter_blocks(blocks).items():
        ranks = tuple(sorted(set().union(*(block_ranks[b] for b in used))))
        by_ranks.setdefault(ranks, []).append(name)
    return [GradientBucket(r, tuple(names)) for r, names in sorted(by_ranks.items())]


class GradientSync:
    """Creates one subgroup per bucket with more than one rank and all-reduces (sums) this rank's buckets."""

    def __init__(self, buckets: list[GradientBucket], rank: int, timeout_s: float):
        self.mine: list[tuple[GradientBucket, object]] = []
        timeout = _dt.timedelta(seconds=timeout_s)
        for bucket in buckets:
            if len(bucket.ranks) < 2:
                continue
            group = dist.new_group(list(bucket.ranks), timeout=timeout)  # every rank calls this, in order
            if rank in bucket.ranks:
                self.mine.append((bucket, group))

    @property
    def bytes_per_iteration(self) -> int:
        return getattr(self, "_bytes", 0)

    def allreduce(self, params: dict[str, nn.Parameter], wait=None) -> None:
        """`wait(work)`, when given, waits on each async all-reduce (the elastic worker's abortable wait)."""
        total = 0
        for bucket, group in self.mine:
            tensors = [params[n] for n in bucket.params]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tensors]
            flat = torch.cat([g.reshape(-1) for g in grads])
            if wait is None:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            else:
                wait(dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group, async_op=True))
            total += flat.numel() * flat.element_size()
            offset = 0
            for p in tensors:
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p).clone()
                offset += n
        self._bytes = total


def message_tag(microbatch: int, backward: bool) -> int:
    """Gloo matches messages by (peer, tag); a micro-batch's activation and gradient get distinct tags."""
    return 2 * microbatch + (1 if backward else 0)
