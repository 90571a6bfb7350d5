"""`SchedulerView`: the part of the scheduler a serving policy may see, read-only.

vLLM's policies see a request and nothing else; ours also need the load (queues, free blocks, the clock and
what preemptions have cost so far) to size bookings and tune padding online. They get exactly that, live,
and no way to change the scheduler's queues or block tables behind its back.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgepool.serving.request import Request

if TYPE_CHECKING:
    from edgepool.serving.scheduler import Scheduler


class ReadOnlyQueue(Sequence):
    """A scheduler queue as policies see it: indexable and iterable, never copied (policies read the queue
    head every admission), and with no way to change it."""

    __slots__ = ("_items",)

    def __init__(self, items):
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __iter__(self):
        return iter(self._items)


class SchedulerView:
    """Live, read-only: every read shows the scheduler as it is now (mid-step included)."""

    __slots__ = ("_scheduler",)

    def __init__(self, scheduler: "Scheduler"):
        self._scheduler = scheduler

    # --- queues ------------------------------------------------------------------------------
    @property
    def waiting(self) -> ReadOnlyQueue:
        """Queued requests, front first (requests preempted by recompute go back to the front)."""
        return ReadOnlyQueue(self._scheduler.waiting)

    @property
    def running(self) -> ReadOnlyQueue:
        return ReadOnlyQueue(self._scheduler.running)

    # --- KV cache ----------------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return self._scheduler.blocks.num_free

    @property
    def total_blocks(self) -> int:
        return self._scheduler.blocks.num_blocks

    @property
    def block_size(self) -> int:
        return self._scheduler.blocks.block_size

    @property
    def capacity_tokens(self) -> int:
        return self._scheduler.capacity_tokens

    @property
    def watermark_blocks(self) -> int:
        """Blocks kept free at admission so running requests can grow."""
        return self._scheduler.watermark_blocks

    def can_swap_out(self, request: Request) -> bool:
        """Whether the host pool has room for the request's computed tokens now."""
        return self._scheduler.blocks.can_swap_out(request.request_id, request.num_computed)

    # --- time and history ----------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self._scheduler.now

    @property
    def mean_step_time(self) -> float:
        """Moving average of step durations so far (0 before the first step)."""
        return self._scheduler.mean_step_time

    @property
    def blocked_on_memory(self) -> bool:
        """Whether the last admission stopped because the policy refused for lack of memory."""
        return self._scheduler.blocked_on_memory

    @property
    def preemptions(self) -> int:
        stats = self._scheduler.stats
        return stats.preempt_recompute + stats.preempt_swap

    @property
    def preemption_cost_s(self) -> float:
        """What every preemption so far cost by the cost model (0 without one)."""
        return self._scheduler.stats.preempt_cost_s

    @property
    def has_cost_model(self) -> bool:
        return self._scheduler.cost is not None
