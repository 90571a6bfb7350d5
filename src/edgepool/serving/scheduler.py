"""The continuous-batching scheduler and the KV-cache policies behind one interface.

Each step the scheduler decides which requests run (prefill, recompute or decode), which are preempted
(by recompute or by swap to the host pool), which swapped requests come back and which waiting requests
are admitted. A `Policy` answers the four questions that differ between systems: how much KV cache to
reserve for a request, which request to preempt, how (recompute or swap), and how to adapt over time.

Policies (see docs/areas/serving.md for the sources; docs/guides/add-serving-policy.md to add one):
  (a) `vllm`        vLLM v0 style: FCFS, blocks allocated on demand, the newest request preempted by recompute.
  (b) `max-reserve` reserve KV for prompt + max_new_tokens at admission: never preempts, admits few.
  (c) `padding`     CacheOPT-style confidence-aware padding: book prompt + predicted length and admit only while
                    the predicted peak of all bookings plus a padding that grows as the predictor's confidence
                    falls (pooled over running requests) fits; the padding factor is tuned online from
                    memory pressure and what preemptions cost (negative: over-booking, when they are
                    cheap). Bookings are not pinned, so booked-but-unused blocks serve others.
  (d) `padding-cost` (c) plus cost-based preemption: the victim is the request with the longest predicted
                    remaining work, preempted by recompute or swap, whichever the cost model says is cheaper
                    at the current load and host-pool occupancy; the waiting queue is ordered by highest
                    response ratio next on predicted lengths. `padding-cost-fcfs`: (d) with FCFS order.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from edgepool.errors import SpecError
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.request import Request, RequestState


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


# ---------------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------------
class Policy:
    """vLLM v0 behaviour; subclasses override what differs."""

    name = "vllm"
    uses_predictor = False

    def reservation(self, request: Request, scheduler: "Scheduler") -> int:
        """Tokens of KV cache to hold for this request when it is (re)admitted."""
        return request.total_tokens

    def choose_victim(self, candidates: list[Request], scheduler: "Scheduler") -> Request:
        return max(candidates, key=lambda r: (r.arrival_time, r.request_id))

    def preempt_mode(self, victim: Request, scheduler: "Scheduler", plan: StepPlan) -> str:
        return "recompute"

    def next_waiting(self, scheduler: "Scheduler") -> Request:
        """Which waiting request to try next (FCFS: the queue head; preempted requests sit at the front)."""
        return scheduler.waiting[0]

    def admits(self, request: Request, scheduler: "Scheduler", need_blocks: int) -> bool:
        """Whether `request` may start now, given it needs `need_blocks` blocks immediately."""
        return need_blocks + scheduler.watermark_blocks <= scheduler.blocks.num_free

    def observe(self, scheduler: "Scheduler") -> None:
        """Called once per step before scheduling (online tuning)."""

    def describe(self) -> dict:
        return {"policy": self.name}


class VllmPolicy(Policy):
    pass


class MaxReservePolicy(Policy):
    name = "max-reserve"

    def reservation(self, request: Request, scheduler: "Scheduler") -> int:
        return request.max_total_tokens


class PaddingPolicy(Policy):
    """Confidence-aware padding: book the predicted length plus a padding sized by the uncertainty.

    A request books prompt + predicted (median) response length; its padding, what it may still need
    beyond that, is the predictor's band (upper quantile - median) times `pad_scale`. Bookings are not
    pinned blocks: blocks are handed out as tokens arrive, so booked-but-not-yet-needed memory serves other
    requests meanwhile (CacheOPT reuses allocated KV cache the same way). A new request is admitted only if
    the predicted peak of KV use, walking every running request (and the newcomer) to its predicted end,
    plus the padding, fits in the cache. Paddings are pooled: independent overruns add like variances, so
    the pool is `pad_scale * sqrt(sum of padding^2)`, which covers the same risk as per-request padding
    with far less idle memory.

    `pad_scale` is tuned online from memory pressure and preemption cost (see `observe`): it grows by what
    each preemption cost, in steps, and shrinks while requests wait at the door although the cache is not
    full, down to `min_scale` < 0 (over-booking) when preemptions stay cheap.
    """

    name = "padding"
    uses_predictor = True

    def __init__(self, pad_scale: float = 1.0, min_scale: float = -1.0, max_scale: float = 3.0,
                 grow_step: float = 0.1, shrink_step: float = 0.01, idle_fraction: float = 0.05,
                 order: str = "fcfs"):
        if order not in ("fcfs", "hrrn"):
            raise SpecError(field="order", value=order, accepted="fcfs, hrrn")
        self.pad_scale, self.min_scale, self.max_scale = pad_scale, min_scale, max_scale
        self.grow_step, self.shrink_step, self.order = grow_step, shrink_step, order
        self.idle_fraction = idle_fraction
        self._last_preemptions, self._last_cost_s = 0, 0.0

    def next_waiting(self, scheduler: "Scheduler") -> Request:
        """FCFS, or highest response ratio next: (waited + predicted service) / predicted service.

        HRRN favours short predicted jobs (what cuts mean latency when a queue forms) and lets every job's
        ratio grow while it waits, so long jobs are never starved. Service = predicted remaining tokens x
        the mean step time the scheduler has observed.
        """
        if self.order == "fcfs" or len(scheduler.waiting) == 1:
            return scheduler.waiting[0]
        step = max(scheduler.mean_step_time, 1e-6)

        def ratio(r: Request) -> float:
            service = max(self.booked_new_tokens(r) - r.num_generated, 1.0) * step
            return (max(scheduler.now - r.arrival_time, 0.0) + service) / service
        return max(scheduler.waiting, key=lambda r: (ratio(r), -r.arrival_time))

    @staticmethod
    def booked_new_tokens(request: Request) -> float:
        """Predicted final response length, given what has been generated so far."""
        predicted = request.predicted_len if request.predicted_len is not None else request.max_new_tokens
        upper = request.predicted_upper if request.predicted_upper is not None else predicted
        if request.num_generated < predicted:
            return predicted
        if request.num_generated < upper:      # past the median: expect it to stop within the band
            return upper
        return min(request.num_generated * 1.25 + 1, request.max_new_tokens)

    @classmethod
    def padding_tokens(cls, request: Request) -> float:
        """What the request may still need beyond its booking (its uncertainty band)."""
        if request.predicted_len is None or request.predicted_upper is None:
            return 0.0
        booked = cls.booked_new_tokens(request)
        return float(max(request.predicted_upper - booked, 0.0))

    def predicted_peak_tokens(self, requests: list[Request], block_size: int) -> float:
        """Max over future steps of KV tokens held if every request runs to its booking, then leaves."""
        items = []
        for r in requests:
            remaining = max(self.booked_new_tokens(r) - r.num_generated, 0.0)
            items.append((remaining, r.total_tokens + block_size / 2))   # last block is half empty on average
        items.sort(key=lambda item: -item[0])
        peak, held = 0.0, 0.0
        for count, (remaining, tokens) in enumerate(items, start=1):
            held += tokens
            peak = max(peak, held + count * remaining)      # just before the request with `remaining` ends
        return peak

    def admits(self, request: Request, scheduler: "Scheduler", need_blocks: int) -> bool:
        blocks = scheduler.blocks
        if need_blocks + scheduler.watermark_blocks > blocks.num_free:
            return False
        if not scheduler.running:          # alone it can always run: a wrong booking only costs a preemption
            return True
        group = scheduler.running + [request]
        pool = self.pad_scale * math.sqrt(sum(self.padding_tokens(r) ** 2 for r in group))
        return self.predicted_peak_tokens(group, blocks.block_size) + pool <= scheduler.capacity_tokens

    def observe(self, scheduler: "Scheduler") -> None:
        """Grow the padding by what preemptions cost, shrink it while memory idles and requests wait.

        A preemption grows `pad_scale` by `grow_step` per step's worth of time it costs by the cost model
        (a swap over a fast host link costs a fraction of a step, a re-prefill of a long request several
        steps); without a cost model every preemption counts as one step. While requests wait at the door
        although more than `idle_fraction` of the cache is free, the scale shrinks by `shrink_step` a step, below
        zero if preemptions stay cheap: a negative scale over-books by that share of the pooled uncertainty,
        as vLLM over-commits, betting that the overruns can be preempted cheaply.
        """
        stats = scheduler.stats
        preemptions = stats.preempt_recompute + stats.preempt_swap
        if preemptions > self._last_preemptions:
            step = scheduler.mean_step_time
            if scheduler.cost is not None and step > 0:
                cost_in_steps = (stats.preempt_cost_s - self._last_cost_s) / step
            else:
                cost_in_steps = float(preemptions - self._last_preemptions)
            self.pad_scale += self.grow_step * cost_in_steps
        elif (scheduler.waiting and scheduler.blocked_on_memory
              and scheduler.blocks.num_free > self.idle_fraction * scheduler.blocks.num_blocks):
            self.pad_scale -= self.shrink_step
        self.pad_scale = min(max(self.pad_scale, self.min_scale), self.max_scale)
        self._last_preemptions, self._last_cost_s = preemptions, stats.preempt_cost_s

    def describe(self) -> dict:
        return {"policy": self.name, "pad_scale": round(self.pad_scale, 3), "order": self.order}


class CostAwarePolicy(PaddingPolicy):
    """(c) plus: victim = longest predicted remaining work; recompute or swap, whichever costs less now.

    It also orders the waiting queue by highest response ratio next on the predicted lengths (HRRN, see
    `next_waiting`); `padding-cost-fcfs` is the same policy with FCFS order, to show what each part buys.
    """

    name = "padding-cost"

    def __init__(self, **kwargs):
        kwargs.setdefault("order", "hrrn")
        super().__init__(**kwargs)

    def choose_victim(self, candidates: list[Request], scheduler: "Scheduler") -> Request:
        def remaining(r: Request) -> float:
            predicted = r.predicted_upper if r.predicted_upper is not None else r.max_new_tokens
            return max(predicted - r.num_generated, 1.0)
        return max(candidates, key=lambda r: (remaining(r), r.arrival_time, r.request_id))

    def preempt_mode(self, victim: Request, scheduler: "Scheduler", plan: StepPlan) -> str:
        recompute, swap = scheduler.preemption_costs(victim, plan)
        return "swap" if swap is not None and swap < recompute else "recompute"


class CostAwareFcfsPolicy(CostAwarePolicy):
    """Ablation of (d): the same, but the waiting queue stays first come first served."""

    name = "padding-cost-fcfs"

    def __init__(self, **kwargs):
        kwargs.setdefault("order", "fcfs")
        super().__init__(**kwargs)


POLICIES: dict[str, type[Policy]] = {
    "vllm": VllmPolicy, "max-reserve": MaxReservePolicy, "padding": PaddingPolicy, "padding-cost": CostAwarePolicy,
    "padding-cost-fcfs": CostAwareFcfsPolicy,
}
POLICY_ALIASES = {"a": "vllm", "b": "max-reserve", "c": "padding", "d": "padding-cost"}


def make_policy(name: str, **kwargs) -> Policy:
    key = POLICY_ALIASES.get(name, name)
    if key not in POLICIES:
        raise SpecError(field="policy", value=name,
                        accepted=", ".join(POLICIES) + " (or a, b, c, d)")
    return POLICIES[key](**kwargs)


# ---------------------------------------------------------------------------------------------------
# Scheduler
# ---------------------------------------------------------------------------------------------------
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
        self.watermark_blocks = int(watermark * blocks.num_blocks)
        self.waiting: deque[Request] = deque()
        self.swapped: list[Request] = []
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        self.blocked_on_memory = False
        self.now = 0.0                  # the executor's clock, as of the last schedule()/complete()
        self.mean_step_time = 0.0       # moving average of step durations seen by complete()

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

    # --- one step ----------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> StepPlan:
        if now is not None:
            self.now = now
        self.policy.observe(self)
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

    def preemption_costs(self, victim: Request, plan: StepPlan) -> tuple[float, float | None]:
        """Seconds a recompute and a swap of `victim` would cost now (swap None: not possible).

        Recompute: the victim's tokens re-enter a later batch as prefill; its cost is what those tokens add
        to a step of the current size (little while steps are memory-bound, full price once compute-bound).
        Swap: its blocks go out now and come back later over the host link. Without a cost model both are
        unknown: recompute counts as 0 and swap as impossible.
        """
        if self.cost is None or victim.num_computed == 0:
            return 0.0, None
        batch_tokens, batch_requests, context = plan.compute_tokens, len(plan.batch), plan.context_tokens
        base = self.cost.step_time(max(batch_tokens, 1), max(batch_requests, 1), context)
        recompute = self.cost.step_time(batch_tokens + victim.total_tokens, batch_requests + 1,
                                        context + victim.total_tokens) - base
        if not self.blocks.can_swap_out(victim.request_id, victim.num_computed):
            return recompute, None
        return recompute, 2.0 * self.cost.copy_time(self.blocks.blocks_for(victim.num_computed))

    def _preempt(self, victim: Request, plan: StepPlan) -> None:
        mode = self.policy.preempt_mode(victim, self, plan)
        if mode == "swap" and not (victim.num_computed and self.blocks.can_swap_out(victim.request_id,
                                                                                   victim.num_computed)):
            mode = "recompute"          # nothing to swap, or the host pool cannot take it
        recompute_cost, swap_cost = self.preemption_costs(victim, plan)
        self.stats.preempt_cost_s += (swap_cost or 0.0) if mode == "swap" else recompute_cost
        self.running.remove(victim)
        if victim in plan.batch:
            plan.batch.remove(victim)
        if mode == "swap":
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
                victim = self.policy.choose_victim(list(self.running), self)
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
            request = self.policy.next_waiting(self)
            if request.tokens_to_compute > budget:
                break
            reserve = max(self.policy.reservation(request, self), request.total_tokens)
            need = self.blocks.blocks_for(reserve)
            if not self.policy.admits(request, self, need):
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
