"""Serving metrics from finished requests: the same fields for the simulator and the real engine."""
from __future__ import annotations

import numpy as np

from edgepool.serving.request import Request, RequestState


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(requests: list[Request], refused: int, stats: dict, makespan_s: float) -> dict:
    """Latency (end to end), TTFT, time between tokens, throughput, preemptions, KV use, and what was lost.

    A request is lost when it neither finished nor got an explicit error or refusal; that must stay 0.
    """
    done = [r for r in requests if r.state is RequestState.FINISHED]
    failed = [r for r in requests if r.state is RequestState.FAILED]
    latencies = [r.latency() for r in done]
    ttfts = [r.ttft() for r in done]
    gaps = [b - a for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    tokens = sum(r.num_generated for r in done)
    # Throughput while the queue was never empty: up to the last first token, every request had started or
    # was waiting. With all requests arriving at once this is the system's sustained capacity, free of the
    # tail where the last long requests run nearly alone.
    saturated_rps = None
    if done:
        start = min(r.arrival_time for r in requests)
        horizon = max(r.first_token_time for r in done)
        finished_by = sum(1 for r in done if r.finish_time <= horizon)
        if horizon > start and finished_by:
            saturated_rps = finished_by / (horizon - start)
    return {
        "submitted": len(requests) + refused,
        "finished": len(done),
        "failed": len(failed),
        "refused": refused,
        "requests_lost": len(requests) - len(done) - len(failed),
        "mean_latency_s": _mean(latencies),
        "p99_latency_s": _pct(latencies, 99),
        "mean_ttft_s": _mean(ttfts),
        "p99_ttft_s": _pct(ttfts, 99),
        "p99_tbt_s": _pct(gaps, 99),
        "throughput_tokens_per_s": tokens / makespan_s if makespan_s > 0 else None,
        "throughput_requests_per_s": len(done) / makespan_s if makespan_s > 0 else None,
        "makespan_s": makespan_s,
        "saturated_requests_per_s": saturated_rps,
        **stats,
    }
