"""`InferenceProgram`: what one process runs for one inference `Plan`.

A plan is a pipeline of stages; each stage is a contiguous range of the model's blocks on a group of devices,
run on one device (`single`), Megatron-style (`tensor`) or Galaxy-style (`tensor+sequence`). Between stages
the stage leaders (first device of each stage) hand the hidden states over with one send; inside a stage the
leader broadcasts them (`tensor`) or scatters their rows (`tensor+sequence`). The last stage's leader applies
the head. A layer pipeline is a plan whose stages each have one device; a hybrid mixes both.

Embeddings and the head are not split: every member of the first stage computes the (cheap) embedding of the
whole input itself, and the last stage's leader computes the head.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from edgepool.errors import SpecError
from edgepool.inference.collectives import (Communicator, SequenceLayout, broadcast_from, gather_rows,
                                            scatter_rows, split_counts)
from edgepool.inference.tensor_parallel import (head_and_column_counts, hidden_size, model_family, shard_layer,
                                                shard_ranges)
from edgepool.plan import Plan

PIPE_TAG = 1 << 21  # leader -> next leader (one message per forward, so one tag suffices)
TOKEN_TAG = (1 << 21) + 1  # last leader -> first leader: the generated token


def stage_mode(stage) -> str:
    if len(stage.devices) == 1:
        return "single"
    if stage.parallel in ("tensor", "tensor+sequence"):
        return stage.parallel
    raise SpecError(field="pipelines.stages.parallel", value=stage.parallel,
                    accepted="tensor or tensor+sequence for an inference stage with several devices",
                    hint="data-parallel stages are for training plans")


class InferenceProgram:
    def __init__(self, plan: Plan, bundle, rank_of: dict[str, int], tiles: int = 1):
        if plan.kind != "inference":
            raise SpecError(field="kind", value=plan.kind, accepted="inference")
        if len(plan.pipelines) != 1:
            raise SpecError(field="pipelines", value=len(plan.pipelines), accepted="exactly 1 for inference")
        blocks = bundle.blocks
        if plan.num_layers != len(blocks):
            raise SpecError(field="num_layers", value=plan.num_layers, accepted=str(len(blocks)),
                            hint=f"the plan was made for another model than {bundle.name}")
        self.family = model_family(bundle)
        self.width = hidden_size(bundle)
        self.num_blocks = len(blocks)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.stage_ranks = [[rank_of[d] for d in st.devices] for st in plan.stages]
        groups = []
        for stage, ranks in zip(plan.stages, self.stage_ranks):  # every rank creates every group, in order
            group = None
            if stage_mode(stage) == "tensor":
                group = dist.group.WORLD if len(ranks) == world else dist.new_group(ranks)
            groups.append(group)
        self.stage = next((i for i, r in enumerate(self.stage_ranks) if self.rank in r), None)
        self.past, self.caching = 0, False  # tokens already in the KV caches
        self.layers = []
        self.embed = self.head = None
        if self.stage is None:
            return
        stage = plan.stages[self.stage]
        self.mode = stage_mode(stage)
        self.comm = Communicator(self.stage_ranks[self.stage], groups[self.stage])
        self.shares = list(stage.shares)
        heads, columns = head_and_column_counts(bundle)
        mine = shard_ranges(heads, columns, self.shares)[self.comm.me]
        lo, hi = stage.layers
        self.layers = [shard_layer(blocks[i], self.family, bundle.hf_model.config, mine)
                       for i in range(lo, hi) if 0 < i < self.num_blocks - 1]
        self.embed = blocks[0] if lo == 0 else None
        self.head = blocks[-1] if hi == self.num_blocks else None
        self.tiles = tiles

    # ------------------------------------------------------------------ roles
    @property
    def is_leader(self) -> bool:
        return self.stage is not None and self.comm.me == 0

    @property
    def first_leader(self) -> int:
        return self.stage_ranks[0][0]

    @property
    def last_leader(self) -> int:
        return self.stage_ranks[-1][0]

    @property
    def is_output_rank(self) -> bool:
        return self.rank == self.last_leader

    def set_cache(self, enabled: bool) -> None:
        self.past, self.caching = 0, enabled
        for layer in self.layers:
            layer.attn.use_cache = enabled
            layer.attn.reset_cache()

    # ------------------------------------------------------------------ one forward pass
    def _embedding(self, ids: torch.Tensor) -> torch.Tensor:
        # Positions continue after the tokens already cached; passed explicitly (a public argument in every
        # transformers release) rather than through a version-specific "past length" keyword.
        positions = torch.arange(self.past, self.past + ids.shape[1])
        if self.family == "gpt2":
            return self.embed.drop(self.embed.wte(ids) + self.embed.wpe(positions))
        if self.family == "bert":
            return self.embed(input_ids=ids, position_ids=positions.unsqueeze(0))
        return self.embed(ids)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor | None, batch: int, seq: int, last_only: bool = False) -> torch.Tensor | None:
        """Run this rank's part for `seq` new tokens; returns the head's output on the last leader, else None.

        `ids` (batch, seq) is needed on the members of the first stage only.
        """
        if self.stage is None:
            return None
        comm, width, dtype = self.comm, self.width, torch.float32
        shape = (batch, seq, width)
        full = None
        if self.embed is not None:
            full = self._embedding(ids)
        elif self.is_leader:
            full = torch.empty(shape, dtype=dtype)
            dist.recv(full, self.stage_ranks[self.stage - 1][0], tag=PIPE_TAG)
        if self.mode == "tensor+sequence":
            layout = SequenceLayout(tuple(split_counts(seq, self.shares)), self.tiles)
            if self.embed is not None:
                start = layout.start(comm.me)
                x = full[:, start:start + layout.counts[comm.me]]
            else:
                x = scatter_rows(comm, layout, full, batch, width, dtype)
            for layer in self.layers:
                x = layer.forward_hybrid(x, comm, layout)
            x = gather_rows(comm, layout, x)
        else:
            x = full
            if self.mode == "tensor" and self.embed is None:
                x = broadcast_from(comm, full, shape, dtype)
            group_comm = comm if self.mode == "tensor" else None
            for layer in self.layers:
                x = layer.forward_tensor(x, group_comm)
        if self.caching:
            self.past += seq
        if not self.is_leader:
            return None
        if self.head is None:
            dist.send(x.contiguous(), self.stage_ranks[self.stage + 1][0], tag=PIPE_TAG)
            return None
        return self.head(x[:, -1:] if last_only else x)
