"""Serving policies: what differs between KV-cache schedulers, one method per decision.

The scheduler (`scheduler.py`) asks a `Policy` how much KV cache to book for a request, whether it may start,
which waiting request to try next, which running request to preempt and how (recompute or swap), and lets it
tune itself once a step. A policy sees requests and a read-only `SchedulerView`, never the scheduler itself.

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

import math
from typing import Sequence

from edgepool.errors import SpecError
from edgepool.serving.preemption import PreemptionCosts, PreemptionMode
from edgepool.serving.request import Request
from edgepool.serving.view import SchedulerView


class Policy:
    """vLLM v0 behaviour; subclasses override what differs."""

    name = "vllm"
    uses_predictor = False

    def reservation(self, request: Request, view: SchedulerView) -> int:
        """Tokens of KV cache to hold for this request when it is (re)admitted."""
        return request.total_tokens

    def admits(self, request: Request, view: SchedulerView, need_blocks: int) -> bool:
        """Whether `request` may start now, given it needs `need_blocks` blocks immediately."""
        return need_blocks + view.watermark_blocks <= view.free_blocks

    def next_waiting(self, view: SchedulerView) -> Request:
        """Which waiting request to try next (FCFS: the queue head; preempted requests sit at the front)."""
        return view.waiting[0]

    def choose_victim(self, candidates: Sequence[Request], view: SchedulerView) -> Request:
        """Which running request gives up its KV cache when one needs a block and none is free."""
        return max(candidates, key=lambda r: (r.arrival_time, r.request_id))

    def preempt_mode(self, victim: Request, view: SchedulerView, costs: PreemptionCosts) -> PreemptionMode:
        """How the victim gives it up; the scheduler falls back to recompute when a swap is impossible."""
        return PreemptionMode.RECOMPUTE

    def observe(self, view: SchedulerView) -> None:
        """Called once per step before scheduling (online tuning)."""

    def describe(self) -> dict:
        return {"policy": self.name}


class VllmPolicy(Policy):
    pass


class MaxReservePolicy(Policy):
    name = "max-reserve"

    def reservation(self, request: Request, view: SchedulerView) -> int:
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

    def next_waiting(self, view: SchedulerView) -> Request:
        """FCFS, or highest response ratio next: (waited + predicted service) / predicted service.

        HRRN favours short predicted jobs (what cuts mean latency when a queue forms) and lets every job's
        ratio grow while it waits, so long jobs are never starved. Service = predicted remaining tokens x
        the mean step time the scheduler has observed.
        """
        waiting = view.waiting
        if self.order == "fcfs" or len(waiting) == 1:
            return waiting[0]
        step, now = max(view.mean_step_time, 1e-6), view.now

        def ratio(r: Request) -> float:
            service = max(self.booked_new_tokens(r) - r.num_generated, 1.0) * step
            return (max(now - r.arrival_time, 0.0) + service) / service
        return max(waiting, key=lambda r: (ratio(r), -r.arrival_time))

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

    def predicted_peak_tokens(self, requests: Sequence[Request], block_size: int) -> float:
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

    def admits(self, request: Request, view: SchedulerView, need_blocks: int) -> bool:
        if need_blocks + view.watermark_blocks > view.free_blocks:
            return False
        running = view.running
        if not running:          # alone it can always run: a wrong booking only costs a preemption
            return True
        group = [*running, request]
        pool = self.pad_scale * math.sqrt(sum(self.padding_tokens(r) ** 2 for r in group))
        return self.predicted_peak_tokens(group, view.block_size) + pool <= view.capacity_tokens

    def observe(self, view: SchedulerView) -> None:
        """Grow the padding by what preemptions cost, shrink it while memory idles and requests wait.

        A preemption grows `pad_scale` by `grow_step` per step's worth of time it costs by the cost model
        (a swap over a fast host link costs a fraction of a step, a re-prefill of a long request several
        steps); without a cost model every preemption counts as one step. While requests wait at the door
        although more than `idle_fraction` of the cache is free, the scale shrinks by `shrink_step` a step, below
        zero if preemptions stay cheap: a negative scale over-books by that share of the pooled uncertainty,
        as vLLM over-commits, betting that the overruns can be preempted cheaply.
        """
        preemptions, cost_s = view.preemptions, view.preemption_cost_s
        if preemptions > self._last_preemptions:
            step = view.mean_step_time
            if view.has_cost_model and step > 0:
                cost_in_steps = (cost_s - self._last_cost_s) / step
            else:
                cost_in_steps = float(preemptions - self._last_preemptions)
            self.pad_scale += self.grow_step * cost_in_steps
        elif (view.waiting and view.blocked_on_memory
              and view.free_blocks > self.idle_fraction * view.total_blocks):
            self.pad_scale -= self.shrink_step
        self.pad_scale = min(max(self.pad_scale, self.min_scale), self.max_scale)
        self._last_preemptions, self._last_cost_s = preemptions, cost_s

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

    def choose_victim(self, candidates: Sequence[Request], view: SchedulerView) -> Request:
        def remaining(r: Request) -> float:
            predicted = r.predicted_upper if r.predicted_upper is not None else r.max_new_tokens
            return max(predicted - r.num_generated, 1.0)
        return max(candidates, key=lambda r: (remaining(r), r.arrival_time, r.request_id))

    def preempt_mode(self, victim: Request, view: SchedulerView, costs: PreemptionCosts) -> PreemptionMode:
        if costs.swap_s is not None and costs.swap_s < costs.recompute_s:
            return PreemptionMode.SWAP
        return PreemptionMode.RECOMPUTE


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
