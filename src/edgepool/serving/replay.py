"""One trace-replay loop for the real engine and the simulator; only the executor differs.

Arrivals are admitted at their time, the scheduler plans a step, an executor carries it out (the engine runs
the model and measures its CPU time; the simulator charges modelled time), the clock advances by what the
step took, and the scheduler records the new tokens and the finished requests. A step that only swaps blocks
(every running request preempted) still copies them, so it costs copy time in both executors.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

from edgepool.report import Report, TimelineEvent
from edgepool.serving.metrics import summarize
from edgepool.serving.request import Request, RequestState
from edgepool.serving.scheduler import RequestRejected, Scheduler, StepCost, StepPlan
from edgepool.serving.traces import TraceRequest


class StepExecutor(Protocol):
    def execute(self, plan: StepPlan) -> tuple[dict[str, int] | None, float]:
        """Do the plan's block copies and forward pass; the new token per request (None: modelled) and seconds."""


class ModelledExecutor:
    """Charges a cost model's time for a step instead of running a model: copies, then the batch (if any)."""

    def __init__(self, cost: StepCost):
        self.cost = cost

    def execute(self, plan: StepPlan) -> tuple[None, float]:
        compute = self.cost.step_time(plan.compute_tokens, len(plan.batch), plan.context_tokens) if plan.batch else 0.0
        return None, compute + self.cost.copy_time(len(plan.swap_out) + len(plan.swap_in))


class Step(NamedTuple):
    plan: StepPlan
    tokens: dict[str, int] | None
    finished: list[Request]
    seconds: float


def run_step(scheduler: Scheduler, executor: StepExecutor, now: float) -> Step:
    """Plan one step at `now`, carry it out, and record its tokens at `now` + the time it took."""
    plan = scheduler.schedule(now)
    tokens, seconds = executor.execute(plan)
    return Step(plan, tokens, scheduler.complete(plan, tokens, now + seconds), seconds)


def trace_requests(trace: list[TraceRequest], prefix: str,
                   tokenize: Callable[[TraceRequest], list[int]] | None = None) -> list[Request]:
    """Requests of a trace; the true length is only a stop condition (`stop_after`, standing in for EOS)."""
    return [Request(request_id=f"{prefix}{i}", prompt_len=t.prompt_len, max_new_tokens=t.max_new_tokens,
                    stop_after=t.response_len, arrival_time=t.arrival_s, prompt_text=t.prompt,
                    prompt_tokens=tokenize(t) if tokenize else None)
            for i, t in enumerate(trace)]


@dataclass
class Replay:
    """What a replay leaves: the admitted requests (finished or failed), the refusals, the clock and the stats."""

    admitted: list[Request]
    refused: int
    makespan_s: float
    stats: dict

    def report(self, *, source: str, where: str, device: str, model: str, extra: dict) -> Report:
        """The replay as a `Report`: `summarize()` figures (plus `extra`) in metrics, one span pair per request."""
        metrics = {**summarize(self.admitted, self.refused, self.stats, self.makespan_s), **extra}
        return Report(source=source, where=where, model=model, throughput=metrics["throughput_requests_per_s"],
                      latency_s=metrics["mean_latency_s"], timeline=request_timeline(self.admitted, device),
                      metrics=metrics)


def request_timeline(requests: list[Request], device: str) -> list[TimelineEvent]:
    """Per finished request: `first-token` (arrival to first token: queueing + prefill) and `decode` (to finish)."""
    events = []
    for r in requests:
        if r.state is RequestState.FINISHED:
            events.append(TimelineEvent(device=device, kind="first-token", start=r.arrival_time,
                                        end=r.first_token_time, request=r.request_id))
            events.append(TimelineEvent(device=device, kind="decode", start=r.first_token_time, end=r.finish_time,
                                        request=r.request_id))
    return events


def replay(requests: list[Request], scheduler: Scheduler, executor: StepExecutor, *,
           admit: Callable[[Request], None] | None = None, check_blocks: bool = False) -> Replay:
    """Serve `requests` (sorted by arrival) to the end; refused ones end FAILED with their message, none silently."""
    admit = admit or scheduler.add
    if scheduler.predictor is not None and requests:
        scheduler.predictor.predict(requests)   # from the prompt only; batched for speed, same as one at a time
    pending, admitted, refused, clock = deque(requests), [], 0, 0.0
    while pending or scheduler.has_work():
        while pending and pending[0].arrival_time <= clock:
            request = pending.popleft()
            try:
                admit(request)
                admitted.append(request)
            except RequestRejected as rejected:
                request.state, request.error = RequestState.FAILED, rejected.message
                refused += 1
        if not scheduler.has_work():
            if not pending:
                break
            clock = pending[0].arrival_time
            continue
        step = run_step(scheduler, executor, clock)
        if not step.plan.batch and not step.plan.swap_out and not pending:
            for stuck in scheduler.live_requests():      # cannot happen with validated sizes; never silent
                scheduler.abort(stuck, "could not be scheduled: KV cache too small")
            break
        clock += step.seconds
        if not step.plan.batch and pending:
            clock = max(clock, pending[0].arrival_time)
        if check_blocks:
            scheduler.blocks.check({r.request_id for r in scheduler.live_requests()})
    first_arrival = requests[0].arrival_time if requests else 0.0
    return Replay(admitted, refused, clock - first_arrival, scheduler.stats.as_dict())
