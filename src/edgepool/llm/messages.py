"""What the coordinator tells the stages each step, and the names of the store keys it travels under.

Plain data, pickled into the `torch.distributed` TCPStore: the coordinator writes one `StepMessage` per
step; every stage reads it, the last stage answers with the sampled tokens. Hidden states do not travel
here: they go stage to stage over the process group (gloo send/recv).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepool.serving.engine import StepInputs


@dataclass
class StepMessage:
    """One scheduler step: block copies, then micro-batches pushed through the stages one after another."""

    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    microbatches: list[StepInputs] = field(default_factory=list)
    stop: bool = False        # leave the loop (the pool is shutting down or re-planning)


def step_key(generation: int, step: int) -> str:
    return f"g{generation}/step/{step}"


def tokens_key(generation: int, step: int) -> str:
    return f"g{generation}/tokens/{step}"


def ready_key(generation: int, rank: int) -> str:
    return f"g{generation}/ready/{rank}"
