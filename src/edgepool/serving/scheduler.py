"""The continuous-batching scheduler, shared by the real engine and the simulator.

Each step it decides which requests run (prefill, recompute or decode), which are preempted (by recompute
or by swap to the host pool), which swapped requests come back and which waiting requests are admitted.
What differs between systems (how much KV cache to book, who is preempted and how, queue order, online
tuning) is asked of a `Policy` (`policies.py`), which sees a read-only `SchedulerView` (`view.py`).
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from edgepool.errors import SpecError
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.policies import Policy
from edgepool.serving.preemption import PreemptionCosts, PreemptionMode
from edgepool.serving.request import Request, RequestState
from edgepool.serving.view import SchedulerView


class RequestRejected(Exception):
    """A request refused at the door with an HTTP-like status (400: can never fit, 503: queue full)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class StepCost(Protocol):
    """What preemption decisions need from a cost model (simulated roofline or measured on the engine)."""

    def step_time(self, compute_tokens: int, num_requests: int, context_tokens: int) -> float: ...

    def copy_time(self, num_blocks: int) -> float: ...


class LengthEstimator(Protocol):
    def predict(self, requests: list[Request]) -> None:
        """Set `predicted_len` (median) and `predicted_upper` (upper quantile) on each request."""


@dataclass
class StepPlan:
    """What the executor must do this step, in order: swap out, swap in, run the batch."""

    batch: list[Request] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)   # (device block, host block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)    # (host block, device block)
    recomputed: list[Request] = field(default_factory=list)
    swapped: list[Request] = field(default_factory=list)

    @property
    def compute_tokens(self) -> int:
        return sum(r.tokens_to_compute for r in self.batch)

    @property
    def context_tokens(self) -> int:
        return sum(r.total_tokens for r in self.batch)


@dataclass
class SchedulerStats:
    steps: int = 0
    preempt_recompute: int = 0
    preempt_swap: int = 0
    recomputed_tokens: int = 0
    swapped_blocks: int = 0
    preempt_cost_s: float = 0.0        # what the chosen preemptions cost by the cost model (re-prefill or copies)
    kv_token_util_sum: float = 0.0     # tokens actually stored / device token capacity, summed over steps
    kv_block_util_sum: float = 0.0     # blocks allocated (incl. reserved) / device blocks, summed over steps

    def as_dict(self) -> dict:
        steps = max(self.steps, 1)
        return {
            "steps": self.steps,
            "preemptions_recompute": self.preempt_recompute,
            "preemptions_swap": self.preempt_swap,
            "recomputed_tokens": self.recomputed_tokens,
            "swapped_blocks": self.swapped_blocks,
            "preemption_cost_s": self.preempt_cost_s,
            "kv_utilization": self.kv_token_util_sum / steps,
            "kv_block_occupancy": self.kv_block_util_sum / steps,
        }


class Scheduler:
    """Shared by the real engine and the simulator: it decides, the executor moves data and computes."""

    def __init__(self, policy: Policy, blocks: BlockManager, *, max_batch_requests: int = 256,
                 max_batch_tokens: int = 2048, max_waiting: int | None = None, watermark: float = 0.01,
                 cost: StepCost | None = None, predictor: LengthEstimator | None = None):
        if policy.uses_predictor and predictor is None:
            raise SpecError(field="predictor", value=None, accepted="a trained LengthPredictor",
                            hint=f"policy {policy.name!r} reserves KV cache from predicted lengths")
        self.policy, self.blocks, self.cost, self.predictor = policy, blocks, cost, predictor
        self.max_batch_requests, self.max_batch_tokens = max_batch_requests, max_batch_tokens
        self.max_waiting = max_waiting
        self.watermark = watermark
        self.watermark_blocks = int(watermark * blocks.num_blocks)
        self.waiting: deque[Request] = deque()
        self.swapped: list[Request] = []
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        self.blocked_on_memory = False
        self.now = 0.0                  # the executor's clock, as of the last schedule()/complete()
        self.mean_step_time = 0.0       # moving average of step durations seen by complete()
        self.view = SchedulerView(self)  # all a policy sees

    # --- intake ------------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.blocks.num_blocks * self.blocks.block_size

    def add(self, request: Request) -> None:
        """Queue a request, or raise RequestRejected with a clear status; nothing is dropped silently."""
        if request.prompt_len <= 0 or request.max_new_tokens <= 0:
            raise RequestRejected(400, f"{request.request_id}: prompt_len={request.prompt_len} and "
                                       f"max_new_tokens={request.max_new_tokens} must both be >= 1")
        # The last generated token never needs K/V, hence the -1.
        if request.max_total_tokens - 1 > self.capacity_tokens:
            raise RequestRejected(400, f"{request.request_id}: prompt ({request.prompt_len}) + max_new_tokens "
                                       f"({request.max_new_tokens}) tokens of KV cache can never fit in "
                                       f"{self.capacity_tokens} tokens of KV cache")
        if request.max_total_tokens > self.max_batch_tokens:
            raise RequestRejected(400, f"{request.request_id}: prompt + max_new_tokens = {request.max_total_tokens} "
                                       f"exceeds the per-step token budget {self.max_batch_tokens}")
        if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
            raise RequestRejected(503, f"server at capacity: {len(self.waiting)} requests already waiting; retry later")
        if self.predictor is not None and self.policy.uses_predictor and request.predicted_len is None:
            self.predictor.predict([request])
        request.state = RequestState.WAITING
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.swapped or self.running)

    def live_requests(self) -> list[Request]:
        return list(self.waiting) + self.swapped + self.running

    def finish_early(self, request: Request) -> None:
        """End a request before max_tokens (its text reached a stop string): finished, its blocks given back."""
        for queue in (self.running, self.swapped, self.waiting):
            if request in queue:
                queue.remove(request)
        self.blocks.free(request.request_id)
        request.state, request.finish_time = RequestState.FINISHED, self.now

    def abort(self, request: Request, message: str) -> None:
        """Fail a request explicitly (executor error, client gone) and give back its blocks."""
        for queue in (self.running, self.swapped):
            if request in queue:
                queue.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        self.blocks.free(request.request_id)
        request.state, request.error = RequestState.FAILED, message

    def restart_all(self, blocks: BlockManager) -> list[Request]:
        """The devices holding the KV cache changed (one left, one joined): every cache is gone. Running and
        swapped requests go back to the waiting queue, ahead of new ones and in arrival order, to recompute
        their prompt and the tokens they already generated (kept: none is lost, none repeated); `blocks` is
        the new pool's block manager. Returns the requeued requests."""
        requeued = sorted(self.running + self.swapped, key=lambda r: (r.arrival_time, r.request_id))
        for request in requeued:
            self.stats.recomputed_tokens += request.num_computed
            request.num_computed, request.state = 0, RequestState.WAITING
            request.recomputes += 1
        self.waiting.extendleft(reversed(requeued))
        self.running, self.swapped = [], []
        self.blocks = blocks
        self.watermark_blocks = int(self.watermark * blocks.num_blocks)
        return requeued

    # --- one step ----------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> StepPlan:
        if now is not None:
            self.now = now
        self.policy.observe(self.view)
        plan = StepPlan()
        preempted = self._schedule_running(plan)
        if not preempted:
            self._swap_in(plan)
        if not preempted and not self.swapped:
            self._admit(plan)
        self.stats.steps += 1
        self.stats.kv_token_util_sum += plan.context_tokens / self.capacity_tokens
        self.stats.kv_block_util_sum += self.blocks.num_used / self.blocks.num_blocks
        return plan

    def preemption_costs(self, victim: Request, plan: StepPlan) -> PreemptionCosts:
        """Seconds a recompute and a swap of `victim` would cost now (swap None: not possible).

        Recompute: the victim's tokens re-enter a later batch as prefill; its cost is what those tokens add
        to a step of the current size (little while steps are memory-bound, full price once compute-bound).
        Swap: its blocks go out now and come back later over the host link. Without a cost model both are
        unknown: recompute counts as 0 and swap as impossible.
        """
        if self.cost is None or victim.num_computed == 0:
            return PreemptionCosts(0.0, None)
        batch_tokens, batch_requests, context = plan.compute_tokens, len(plan.batch), plan.context_tokens
        base = self.cost.step_time(max(batch_tokens, 1), max(batch_requests, 1), context)
        recompute = self.cost.step_time(batch_tokens + victim.total_tokens, batch_requests + 1,
                                        context + victim.total_tokens) - base
        if not self.blocks.can_swap_out(victim.request_id, victim.num_computed):
            return PreemptionCosts(recompute, None)
        return PreemptionCosts(recompute, 2.0 * self.cost.copy_time(self.blocks.blocks_for(victim.num_computed)))

    def _preempt(self, victim: Request, plan: StepPlan) -> None:
        costs = self.preemption_costs(victim, plan)
        mode = PreemptionMode.parse(self.policy.preempt_mode(victim, self.view, costs))
        if mode is PreemptionMode.SWAP and not (victim.num_computed and self.view.can_swap_out(victim)):
            mode = PreemptionMode.RECOMPUTE          # nothing to swap, or the host pool cannot take it
        self.stats.preempt_cost_s += costs.cost_of(mode)
        self.running.remove(victim)
        if victim in plan.batch:
            plan.batch.remove(victim)
        if mode is PreemptionMode.SWAP:
            pairs = self.blocks.swap_out(victim.request_id, victim.num_computed)
            plan.swap_out.extend(pairs)
            victim.state = RequestState.SWAPPED
            victim.swaps += 1
            self.stats.preempt_swap += 1
            self.stats.swapped_blocks += len(pairs)
            bisect.insort(self.swapped, victim, key=lambda r: (r.arrival_time, r.request_id))
            plan.swapped.append(victim)
        else:
            self.blocks.free(victim.request_id)
            self.stats.recomputed_tokens += victim.num_computed
            victim.num_computed = 0
            victim.state = RequestState.WAITING
            victim.recomputes += 1
            self.stats.preempt_recompute += 1
            self.waiting.appendleft(victim)
            plan.recomputed.append(victim)

    def _schedule_running(self, plan: StepPlan) -> bool:
        preempted = False
        self.running.sort(key=lambda r: (r.arrival_time, r.request_id))
        i = 0
        while i < len(self.running):
            request = self.running[i]
            missing = self.blocks.blocks_for(request.total_tokens) - self.blocks.num_blocks_of(request.request_id)
            while missing > self.blocks.num_free:
                victim = self.policy.choose_victim(tuple(self.running), self.view)
                victim_index = self.running.index(victim)
                self._preempt(victim, plan)
                preempted = True
                if victim is request:
                    break
                if victim_index < i:
                    i -= 1
            if request.state is not RequestState.RUNNING:
                continue
            if missing > 0:
                self.blocks.grow_to(request.request_id, request.total_tokens)
            plan.batch.append(request)
            i += 1
        return preempted

    def _swap_in(self, plan: StepPlan) -> None:
        while self.swapped and len(plan.batch) < self.max_batch_requests:
            request = self.swapped[0]
            need = max(self.blocks.blocks_for(request.total_tokens),
                       len(self.blocks.host_tables.get(request.request_id, [])))
            if need > self.blocks.num_free - self.watermark_blocks:
                break
            self.swapped.pop(0)
            plan.swap_in.extend(self.blocks.swap_in(request.request_id))
            self.blocks.grow_to(request.request_id, request.total_tokens)
            request.state = RequestState.RUNNING
            self.running.append(request)
            plan.batch.append(request)

    def _admit(self, plan: StepPlan) -> None:
        self.blocked_on_memory = False
        budget = self.max_batch_tokens - plan.compute_tokens
        while self.waiting and len(plan.batch) < self.max_batch_requests:
            request = self.policy.next_waiting(self.view)
            if request.tokens_to_compute > budget:
                break
            reserve = max(self.policy.reservation(request, self.view), request.total_tokens)
            need = self.blocks.blocks_for(reserve)
            if not self.policy.admits(request, self.view, need):
                self.blocked_on_memory = True
                break
            self.waiting.remove(request)
            self.blocks.allocate(request.request_id, need)
            request.reserved_tokens = reserve
            request.state = RequestState.RUNNING
            self.running.append(request)
            plan.batch.append(request)
            budget -= request.tokens_to_compute

    # --- after the executor ran the step --------------------------------------------------------
    def complete(self, plan: StepPlan, new_tokens: dict[str, int] | None, now: float) -> list[Request]:
        """Record one new token per batched request at time `now`; returns the requests that finished."""
        if now > self.now:
            duration = now - self.now
            self.mean_step_time = duration if self.mean_step_time == 0 else 0.9 * self.mean_step_time + 0.1 * duration
        self.now = now
        finished = []
        for request in plan.batch:
            request.num_computed = request.total_tokens
            if new_tokens is not None:
                token = new_tokens[request.request_id]
                request.output_tokens.append(token)
            else:
                token = None
            request.num_generated += 1
            request.token_times.append(now)
            if request.first_token_time is None:
                request.first_token_time = now
            stop = token is not None and request.eos_token_id is not None and token == request.eos_token_id
            if request.stop_after is not None and request.num_generated >= request.stop_after:
                stop = True
            if stop or request.num_generated >= request.max_new_tokens:
                request.state = RequestState.FINISHED
                request.finish_time = now
                self.running.remove(request)
                self.blocks.free(request.request_id)
                finished.append(request)
        return finished
