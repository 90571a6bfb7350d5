"""Request traces: arrival processes and prompt/response lengths shaped like public chat workloads.

Length statistics (means are the published figures; the shapes are our modelling choice):
  * ShareGPT-like: mean prompt 161.31 tokens, mean response 337.99 tokens; Alpaca-like: mean prompt
    19.31 tokens, mean response 58.45 tokens. Source: Kwon et al., "Efficient Memory Management for
    Large Language Model Serving with PagedAttention" (vLLM), SOSP 2023, arXiv 2309.06180, section 6.1
    and Fig. 11 ("ShareGPT has 8.4x longer input prompts and 5.8x longer outputs on average than Alpaca").
  * Both are long-tailed; we draw log-normal lengths whose means match those figures, and clip them to the
    model context (2048 tokens for ShareGPT-like, as vLLM's evaluation with 2048-token OPT/LLaMA contexts).
  * Responses depend on the kind of instruction (a summary is short, a story is long). Each request gets a
    task kind whose instruction starts the prompt text, and the kind scales the median response length;
    this is the signal a length predictor can learn from the prompt (as CacheOPT and S3 learn from prompts).

Arrivals: Poisson (exponential gaps) or bursty (gamma gaps with coefficient of variation > 1, the shape
BurstGPT, arXiv 2401.17644, reports for real LLM services).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgepool.errors import SpecError


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    prompt: str
    prompt_len: int
    response_len: int
    max_new_tokens: int
    kind: str


@dataclass(frozen=True)
class WorkloadShape:
    name: str
    mean_prompt: float
    mean_response: float
    prompt_sigma: float
    response_sigma: float
    max_context: int
    source: str


WORKLOADS = {
    "sharegpt": WorkloadShape("sharegpt", 161.31, 337.99, 0.8, 0.6, 2048,
                              "Kwon et al. SOSP'23 (vLLM) sec. 6.1 / Fig. 11: ShareGPT means 161.31 in, 337.99 out"),
    "alpaca": WorkloadShape("alpaca", 19.31, 58.45, 0.5, 0.6, 512,
                            "Kwon et al. SOSP'23 (vLLM) sec. 6.1 / Fig. 11: Alpaca means 19.31 in, 58.45 out"),
}

# Task kinds: (instruction opening, relative median response length, share of requests).
TASK_KINDS = {
    "classify": ("Classify the sentiment of this review", 0.15, 0.12),
    "answer": ("Answer the question briefly", 0.35, 0.18),
    "translate": ("Translate the following text into French", 0.8, 0.12),
    "summarize": ("Summarize the following article", 0.6, 0.14),
    "explain": ("Explain in detail how this works", 1.4, 0.16),
    "code": ("Write a Python program that", 1.8, 0.14),
    "story": ("Write a long story about", 2.6, 0.14),
}

_FILLER = ("the of a data system model user time people city river music energy light paper market "
           "school water garden window history network engine problem answer").split()


def _lognormal_with_mean(rng: np.random.Generator, mean: float, sigma: float, size: int,
                         scale: np.ndarray | None = None) -> np.ndarray:
    mu = math.log(mean) - sigma ** 2 / 2
    base = rng.lognormal(mu, sigma, size)
    if scale is not None:
        base = base * scale
    return base


def arrivals(rng: np.random.Generator, n: int, rate: float, pattern: str = "poisson", burstiness: float = 4.0
             ) -> np.ndarray:
    """Arrival times (s) of n requests at `rate` per second; `bursty` uses gamma gaps with CV^2 = burstiness."""
    if rate <= 0:
        raise SpecError(field="rate", value=rate, accepted="requests per second > 0")
    if pattern == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif pattern == "bursty":
        shape = 1.0 / burstiness
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise SpecError(field="pattern", value=pattern, accepted="poisson, bursty")
    times = np.cumsum(gaps)
    return times - times[0]


def generate_trace(workload: str = "sharegpt", n: int = 200, rate: float = 1.0, pattern: str = "poisson",
                   seed: int = 0, length_scale: float = 1.0, max_context: int | None = None) -> list[TraceRequest]:
    """A reproducible trace. `length_scale` shrinks all lengths (a small CPU model cannot serve 2k contexts)."""
    if workload not in WORKLOADS:
        raise SpecError(field="workload", value=workload, accepted=", ".join(WORKLOADS))
    if n <= 0:
        raise SpecError(field="n", value=n, accepted="number of requests >= 1")
    shape = WORKLOADS[workload]
    context = max_context or max(int(shape.max_context * length_scale), 8)
    rng = np.random.default_rng(seed)
    kinds = list(TASK_KINDS)
    shares = np.array([TASK_KINDS[k][2] for k in kinds])
    picks = rng.choice(len(kinds), size=n, p=shares / shares.sum())
    rel = np.array([TASK_KINDS[kinds[i]][1] for i in picks])
    rel_mean = float((shares / shares.sum() * np.array([TASK_KINDS[k][1] for k in kinds])).sum())
    prompt = _lognormal_with_mean(rng, shape.mean_prompt * length_scale, shape.prompt_sigma, n)
    response = _lognormal_with_mean(rng, shape.mean_response * length_scale, shape.response_sigma, n,
                                    scale=rel / rel_mean)
    times = arrivals(rng, n, rate, pattern)
    out = []
    for i in range(n):
        p_len = int(min(max(round(prompt[i]), 4), context // 2))
        max_new = context - p_len
        r_len = int(min(max(round(response[i]), 1), max_new))
        kind = kinds[picks[i]]
        words = [TASK_KINDS[kind][0]] + list(rng.choice(_FILLER, size=max(p_len - 6, 0)))
        out.append(TraceRequest(float(times[i]), " ".join(words), p_len, r_len, max_new, kind))
    return out


def trace_stats(trace: list[TraceRequest]) -> dict:
    prompts = np.array([t.prompt_len for t in trace])
    responses = np.array([t.response_len for t in trace])
    span = trace[-1].arrival_s - trace[0].arrival_s if len(trace) > 1 else 0.0
    return {"requests": len(trace), "mean_prompt": float(prompts.mean()), "mean_response": float(responses.mean()),
            "p99_response": float(np.percentile(responses, 99)),
            "rate_rps": (len(trace) - 1) / span if span > 0 else None}


def retime(trace: list[TraceRequest], rate: float, pattern: str = "poisson", seed: int = 0) -> list[TraceRequest]:
    """The same requests with new arrival times (same lengths at a different load)."""
    times = arrivals(np.random.default_rng(seed + 7919), len(trace), rate, pattern)
    return [TraceRequest(float(t), r.prompt, r.prompt_len, r.response_len, r.max_new_tokens, r.kind)
            for t, r in zip(times, trace)]
