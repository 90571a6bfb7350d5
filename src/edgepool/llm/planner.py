"""The LLM pipeline planner: which devices serve a decoder-only LLM, in which order, with which layers.

How a `Plan` encodes an LLM pipeline (`Plan.num_layers` = L + 2 blocks):
    block 0        = the token embedding          (always in stage 0)
    blocks 1 .. L  = transformer layers 0 .. L-1
    block L + 1    = final norm + LM head          (always in the last stage, which samples)
Each `StagePlan.layers` is a [start, end) block range with one device; the stages cover blocks 0 .. L+1
contiguously, and every stage holds at least one transformer layer. `stage_layer_ranges(plan)` gives the
[start, end) transformer-layer ranges (what the runtime builds). Uneven layer counts and any number of
stages are fine.

The predictor (`predict`, shared by the planner and the baselines, so a benchmark can score any plan) models
the runtime: a coordinator runs one continuous-batching step at a time; a step splits its R requests into
m = min(stages, R) micro-batches that go through the stages in order; stage s spends
    c_s(mb) = stage_time(its layers, embedding?, head?, mb's tokens) + 2 messages' overhead
              + transfer of the mb's hidden states (tokens x hidden x 4 bytes) to stage s+1 over their link
(the sender is busy while it sends), a stage starts a micro-batch when it has finished the previous one and
received this one, and the step ends when the last micro-batch leaves the last stage, plus a fixed per-step
overhead (the coordinator's round trip). With equal micro-batches that is
    step = sum_s c_s(mb) + (m - 1) max_s c_s(mb) + step_overhead.
Every step pays a fill and a drain, so with m = S the stages are busy at most S / (2S - 1) of the time.
`overlap=True` models a runtime that does not wait for the whole step: each micro-batch starts its next
decode step as soon as its token is sampled (vLLM's virtual engines); a request then gets a token every
    decode_cycle = max(max_mb (sum_s c_s(mb) + step_overhead), max_s sum_mb c_s(mb)).
A workload (R concurrent requests of P prompt tokens and N new tokens) costs one prefill step (R prompts:
the time to first token) and N - 1 decode steps (one token per request, attending to P + (N-1)/2 cached
tokens on average):
    tokens_per_s = R N / (prefill_step + (N - 1) decode_step)      (decode_step = decode_cycle with overlap),
and the single-stream figure is the same with R = 1.

The search (`plan_llm`) maximizes the workload's tokens/s over device subsets (all subsets up to 8 devices,
else speed-sorted prefixes), orders (every order when the pool has at most 5 devices; else by speed, reversed,
fastest last, and a greedy link-aware order that keeps fast links adjacent) and contiguous uneven splits (for
each order, the bottleneck bound B runs over every stage time a stage can have; under B each stage gets at
most the layers that keep it under B and that fit its memory; layers go to the stages with the cheapest
per-layer time first; sum + (m-1) B is minimized), then re-scores with `predict` and refines the best splits
by moving one boundary at a time. Every single device that holds the whole model is a candidate, so the
predicted tokens/s is never below the best single device's. Devices not used get a reason in words in
`plan.notes["left_out"]`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.llm.profile import DTYPE_BYTES, LLMProfile, stage_time
from edgepool.network import LinkCache
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.units import format_bandwidth

STEP_OVERHEAD_S = 0.002  # coordinator round trip per step (measured 1-3 ms on the testbed)
MESSAGE_OVERHEAD_S = 2e-4  # CPU time of one gloo send or recv (cost.message_overhead_s overrides per device)
RUNTIME_OVERHEAD_BYTES = 300 * 2**20  # per worker process: torch, gloo, allocator slack
MEMORY_HEADROOM = 0.9  # plan up to this fraction of a device's memory
KV_BLOCK_TOKENS = 16  # the paged KV cache rounds each request up to whole blocks
EXHAUSTIVE_SUBSETS_UP_TO = 8
ALL_ORDERS_UP_TO = 5
GiB = 2**30


@dataclass(frozen=True)
class LLMWorkload:
    """R concurrent requests, each with `prompt_tokens` of prompt and `new_tokens` to generate."""

    requests: int = 16
    prompt_tokens: int = 64
    new_tokens: int = 64

    def __post_init__(self):
        limits = {"requests": 100_000, "prompt_tokens": 10_000_000, "new_tokens": 10_000_000}
        for name, top in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise SpecError(field=name, value=value, accepted=f"a whole number from 1 to {top:,}")


DEFAULT_WORKLOAD = LLMWorkload()


# ----------------------------------------------------------------------------- block encoding
def stage_layer_ranges(plan: Plan) -> list[tuple[int, int]]:
    """[start, end) transformer-layer ranges of the plan's stages (block b is layer b - 1; blocks 0 and L+1,
    embedding and head, belong to the first and last stage)."""
    layers = plan.num_layers - 2
    return [(max(a, 1) - 1, min(b, layers + 1) - 1) for a, b in (s.layers for s in plan.stages)]


def _blocks(counts: list[int]) -> list[tuple[int, int]]:
    """Block ranges for per-stage transformer-layer counts."""
    total, edges, acc = sum(counts), [0], 0
    for c in counts[:-1]:
        acc += c
        edges.append(acc + 1)
    edges.append(total + 2)
    return list(zip(edges, edges[1:]))


# ----------------------------------------------------------------------------- the predictor
class _Model:
    """Per-stage costs for one profile, cluster, workload and cost model, memoized."""

    def __init__(self, profile: LLMProfile, cluster: Cluster, workload: LLMWorkload, cost: CostModel | None,
                 step_overhead_s: float, overlap: bool = False):
        self.profile, self.cluster, self.workload = profile, cluster, workload
        self.overlap = overlap
        self.cost = cost or CostModel()
        self.step_overhead_s = step_overhead_s
        self.links = LinkCache(cluster)
        self._unit: dict = {}
        self._xfer: dict = {}

    # micro-batches of a step of `requests` requests over `stages` stages
    @staticmethod
    def microbatches(requests: int, stages: int) -> list[int]:
        m = max(1, min(stages, requests))
        return [requests // m + (1 if i < requests % m else 0) for i in range(m)]

    def _phase(self, phase: str, r: int) -> tuple[int, int, float]:
        """(tokens, sequences, average cached context) of a micro-batch of r requests."""
        w = self.workload
        if phase == "prefill":
            return r * w.prompt_tokens, r, w.prompt_tokens / 2
        return r, r, w.prompt_tokens + (w.new_tokens - 1) / 2

    def unit(self, device: str, phase: str, r: int) -> tuple[float, float, float]:
        """(per-layer, head, embedding) seconds on `device` for a micro-batch of r requests in `phase`."""
        key = (device, phase, r)
        if key not in self._unit:
            dev = self.cluster.devices[device]
            mode = dev.mode(self.cluster.power_modes.get(device))
            tokens, seqs, ctx = self._phase(phase, r)
            kw = dict(sequences=seqs, context=ctx, cost=self.cost, mode=mode)
            layer = stage_time(self.profile, dev, 1, False, False, tokens, **kw)
            head = stage_time(self.profile, dev, 0, True, False, tokens, **kw)
            embed = stage_time(self.profile, dev, 0, False, True, tokens, **kw)
            self._unit[key] = (layer, head, embed)
        return self._unit[key]

    def message_s(self, device: str) -> float:
        return 2 * self.cost.message_overhead_s.get(device, MESSAGE_OVERHEAD_S)

    def transfer(self, a: str, b: str, phase: str, r: int) -> float:
        key = (a, b, phase, r)
        if key not in self._xfer:
            tokens = self._phase(phase, r)[0]
            link = self.links(a, b)
            self._xfer[key] = self.cost.transfer_time(tokens * self.profile.hidden_bytes_per_token, link,
                                                      medium_capacity=self.links.capacity(link))
        return self._xfer[key]

    def stage_cost(self, order: list[str], counts: list[int], s: int, phase: str, r: int) -> tuple[float, float]:
        """(compute incl. messages, transfer to the next stage) of stage s for a micro-batch of r requests."""
        layer, head, embed = self.unit(order[s], phase, r)
        t = counts[s] * layer + (embed if s == 0 else 0.0) + (head if s == len(order) - 1 else 0.0)
        t += self.message_s(order[s])
        x = self.transfer(order[s], order[s + 1], phase, r) if s + 1 < len(order) else 0.0
        return t, x

    def step_time(self, order: list[str], counts: list[int], phase: str, requests: int) -> float:
        """One step through the pipeline (fill, steady state, drain) plus the per-step overhead."""
        S = len(order)
        free = [0.0] * S
        arrival = 0.0
        for r in self.microbatches(requests, S):
            arrival = 0.0
            for s in range(S):
                t, x = self.stage_cost(order, counts, s, phase, r)
                free[s] = max(free[s], arrival) + t + x
                arrival = free[s]
        return arrival + self.step_overhead_s

    def decode_cycle(self, order: list[str], counts: list[int], requests: int) -> float:
        """Overlapped decoding: each micro-batch starts its next step as soon as its token is sampled, so a
        request gets a token every max(slowest micro-batch's round trip, busiest stage's work on all of them)."""
        S = len(order)
        mbs = self.microbatches(requests, S)
        load = [0.0] * S
        trip = 0.0
        for r in mbs:
            around = self.step_overhead_s
            for s in range(S):
                t, x = self.stage_cost(order, counts, s, "decode", r)
                load[s] += t + x
                around += t + x
            trip = max(trip, around)
        return max(trip, max(load))

    def decode_time(self, order: list[str], counts: list[int], requests: int) -> float:
        if self.overlap:
            return self.decode_cycle(order, counts, requests)
        return self.step_time(order, counts, "decode", requests)

    # memory
    def memory_bytes(self, order: list[str], counts: list[int], s: int) -> float:
        """Stage s's weights, KV cache for the workload's tokens, activations and runtime overhead."""
        first, last = s == 0, s == len(order) - 1
        return self.fixed_memory(first, last, len(order)) + counts[s] * self.per_layer_memory()

    def per_layer_memory(self) -> float:
        p, w = self.profile, self.workload
        kv_tokens = w.requests * math.ceil((w.prompt_tokens + w.new_tokens) / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
        return p.layer_param_bytes + kv_tokens * p.kv_bytes_per_token_layer

    def fixed_memory(self, first: bool, last: bool, stages: int) -> float:
        p, w = self.profile, self.workload
        r = self.microbatches(w.requests, stages)[0]
        tokens = r * w.prompt_tokens
        act = tokens * (4 * p.hidden_size + 3 * p.intermediate_size) * DTYPE_BYTES  # a prefill micro-batch
        extra = p.embed_bytes if first else 0.0
        if last:
            extra += p.head_bytes if not (first and p.tie_word_embeddings) else p.hidden_size * DTYPE_BYTES
            extra += r * p.vocab_size * DTYPE_BYTES  # logits of the sampled positions
        return extra + act + max(self.cost.runtime_overhead_bytes, RUNTIME_OVERHEAD_BYTES)

    def capacity(self, device: str) -> float:
        return self.cluster.devices[device].memory_bytes * MEMORY_HEADROOM

    def max_layers(self, device: str, first: bool, last: bool, stages: int) -> int:
        free = self.capacity(device) - self.fixed_memory(first, last, stages)
        return max(0, min(self.profile.num_layers, int(free // self.per_layer_memory())))

    def predict(self, order: list[str], counts: list[int]) -> dict[str, float]:
        w = self.workload
        pre = self.step_time(order, counts, "prefill", w.requests)
        dec = self.decode_time(order, counts, w.requests)
        pre1 = self.step_time(order, counts, "prefill", 1)
        dec1 = self.decode_time(order, counts, 1)
        total = pre + (w.new_tokens - 1) * dec
        total1 = pre1 + (w.new_tokens - 1) * dec1
        fits = all(self.memory_bytes(order, counts, s) <= self.capacity(d) for s, d in enumerate(order))
        return {"tokens_per_s": w.requests * w.new_tokens / total,
                "single_stream_tokens_per_s": w.new_tokens / total1,
                "ttft_s": pre, "decode_step_s": dec, "prefill_step_s": pre,
                "single_stream_ttft_s": pre1, "single_stream_decode_step_s": dec1,
                "decode_tokens_per_s": w.requests / dec, "stages": float(len(order)),
                "microbatches": float(len(self.microbatches(w.requests, len(order)))),
                "fits_memory": float(fits)}


def _order_counts(plan: Plan) -> tuple[list[str], list[int]]:
    order = [s.devices[0] for s in plan.stages]
    counts = [b - a for a, b in stage_layer_ranges(plan)]
    return order, counts


def predict(plan: Plan, profile: LLMProfile, cluster: Cluster, workload: LLMWorkload, *,
            cost: CostModel | None = None, step_overhead_s: float = STEP_OVERHEAD_S, overlap: bool = False) -> dict[str, float]:
    """The runtime's simulator: tokens/s (concurrent and single-stream), time to first token, step times of a
    plan for this workload (see the module docstring). Works for any plan in the block encoding above."""
    if plan.num_layers != profile.num_layers + 2:
        raise SpecError(field="num_layers", value=plan.num_layers, accepted=f"{profile.num_layers + 2} blocks "
                        f"(embedding + {profile.num_layers} layers + head) for {profile.name}")
    if any(len(s.devices) != 1 for s in plan.stages):
        raise SpecError(field="pipelines.stages.devices", value=[s.devices for s in plan.stages],
                        accepted="one device per stage (LLM pipelines are not tensor parallel)")
    order, counts = _order_counts(plan)
    return _Model(profile, cluster, workload, cost, step_overhead_s, overlap).predict(order, counts)


# ----------------------------------------------------------------------------- plans
def _plan(name: str, model: _Model, order: list[str], counts: list[int], notes: dict | None = None,
          infeasible: str | None = None) -> Plan:
    p, w = model.profile, model.workload
    predicted = model.predict(order, counts)
    mem = {d: model.memory_bytes(order, counts, s) for s, d in enumerate(order)}
    if infeasible is None and not predicted["fits_memory"]:
        over = [f"{d} needs {mem[d] / GiB:.2f} GiB, has {model.cluster.devices[d].memory_bytes / GiB:.2f} GiB"
                for d in order if mem[d] > model.capacity(d)]
        infeasible = "does not fit in memory: " + "; ".join(over)
    stages = [StagePlan(layers=r, devices=[d], shares=[1.0]) for r, d in zip(_blocks(counts), order)]
    stage_s = {}
    for s, d in enumerate(order):
        r = model.microbatches(w.requests, len(order))[0]
        t, x = model.stage_cost(order, counts, s, "decode", r)
        stage_s[d] = {"layers": counts[s], "decode_compute_s": t, "decode_transfer_s": x}
    return Plan(kind="inference", planner=name, model=p.name, cluster=model.cluster.name,
                num_layers=p.num_layers + 2, batch=w.requests,
                microbatches=len(model.microbatches(w.requests, len(order))), schedule="none",
                seq=w.prompt_tokens + w.new_tokens, pipelines=[PipelinePlan(stages=stages)],
                feasible=infeasible is None, infeasible_reason=infeasible, predicted=predicted,
                notes={"blocks": f"block 0 = embedding, blocks 1..{p.num_layers} = transformer layers "
                                 f"0..{p.num_layers - 1}, block {p.num_layers + 1} = final norm + LM head",
                       "layer_ranges": [list(r) for r in _layer_ranges(counts)],
                       "workload": asdict(w), "simulated": "predicted by edgepool.llm.planner.predict",
                       "host_times": p.host_measured.get("where") if p.measured else None,
                       "memory_bytes": mem, "per_microbatch_decode": stage_s, **(notes or {})})


def _layer_ranges(counts: list[int]) -> list[tuple[int, int]]:
    edges = [0, *itertools.accumulate(counts)]
    return list(zip(edges, edges[1:]))


def _names(cluster: Cluster, devices: list[str] | None) -> list[str]:
    if devices is None:
        return list(cluster.devices)
    if not devices:
        raise SpecError(field="devices", value=devices, accepted="at least one device of the cluster")
    unknown = [d for d in devices if d not in cluster.devices]
    if unknown:
        raise SpecError(field="devices", value=unknown, accepted=", ".join(cluster.devices))
    return list(dict.fromkeys(devices))


def _check(profile: LLMProfile, workload: LLMWorkload) -> None:
    if not isinstance(workload, LLMWorkload):
        raise SpecError(field="workload", value=type(workload).__name__,
                        accepted="an LLMWorkload(requests, prompt_tokens, new_tokens)")
    if not isinstance(profile, LLMProfile):
        raise SpecError(field="profile", value=type(profile).__name__, accepted="an LLMProfile")


def _proportional(total: int, weights: list[float]) -> list[int]:
    """Whole counts >= 1 summing to `total`, proportional to weights (largest remainders)."""
    k = len(weights)
    if total < k:
        raise SpecError(field="devices", value=k, accepted=f"at most {total} devices: one layer per stage at least")
    s = sum(weights)
    raw = [(total - k) * w / s for w in weights]
    counts = [1 + int(x) for x in raw]
    for i in sorted(range(k), key=lambda i: -(raw[i] - int(raw[i])))[:total - sum(counts)]:
        counts[i] += 1
    return counts


def memory_weighted_split(profile: LLMProfile, cluster: Cluster, devices: list[str] | None = None,
                          workload: LLMWorkload = DEFAULT_WORKLOAD, *, cost: CostModel | None = None,
                          step_overhead_s: float = STEP_OVERHEAD_S, overlap: bool = False) -> Plan:
    """exo's RingMemoryWeightedPartitioningStrategy: every device, ordered by memory (largest first), layers in
    proportion to its memory. Scored by `predict`; `feasible` is False when a stage does not fit."""
    _check(profile, workload)
    names = _names(cluster, devices)
    order = sorted(names, key=lambda d: -cluster.devices[d].memory_bytes)
    counts = _proportional(profile.num_layers, [cluster.devices[d].memory_bytes for d in order])
    model = _Model(profile, cluster, workload, cost, step_overhead_s, overlap)
    return _plan("memory-weighted", model, order, counts)


def even_split(profile: LLMProfile, cluster: Cluster, devices: list[str] | None = None,
               workload: LLMWorkload = DEFAULT_WORKLOAD, *, cost: CostModel | None = None,
               step_overhead_s: float = STEP_OVERHEAD_S, overlap: bool = False) -> Plan:
    """Every device, in the given (or cluster) order, the layers split as evenly as whole numbers allow."""
    _check(profile, workload)
    names = _names(cluster, devices)
    counts = _proportional(profile.num_layers, [1.0] * len(names))
    model = _Model(profile, cluster, workload, cost, step_overhead_s, overlap)
    return _plan("even-split", model, names, counts)


def best_single(profile: LLMProfile, cluster: Cluster, workload: LLMWorkload = DEFAULT_WORKLOAD, *,
                devices: list[str] | None = None, cost: CostModel | None = None,
                step_overhead_s: float = STEP_OVERHEAD_S, overlap: bool = False) -> Plan:
    """The whole model on the one device with the highest predicted tokens/s among those it fits on (if it fits
    on none: the one with the most memory, marked infeasible)."""
    _check(profile, workload)
    names = _names(cluster, devices)
    model = _Model(profile, cluster, workload, cost, step_overhead_s, overlap)
    L = profile.num_layers
    fitting = [d for d in names if model.max_layers(d, True, True, 1) >= L]
    if not fitting:
        d = max(names, key=lambda n: cluster.devices[n].memory_bytes)
        return _plan("best-single", model, [d], [L])
    d = max(fitting, key=lambda n: model.predict([n], [L])["tokens_per_s"])
    return _plan("best-single", model, [d], [L])


# ----------------------------------------------------------------------------- the search
def _split(model: _Model, order: list[str], weights: dict[str, float], m: int) -> list[int] | None:
    """Layer counts for `order` (each stage within its memory) minimizing the phase-weighted step time, with
    c_s = alpha_s + beta_s n_s per phase: sum_s c_s + (m - 1) max_s c_s for a synchronous step,
    max(sum_s c_s, m max_s c_s) for an overlapped decode. None when the stages cannot hold the model."""
    L, k = model.profile.num_layers, len(order)
    if k > L:
        return None
    r = model.microbatches(model.workload.requests, k)[0]
    phases = list(weights)
    alpha = {ph: [] for ph in phases}
    beta = {ph: [] for ph in phases}
    cap = []
    for s, d in enumerate(order):
        for ph in phases:
            one = model.stage_cost(order, [1] * k, s, ph, r)
            layer = model.unit(d, ph, r)[0]
            alpha[ph].append(sum(one) - layer)
            beta[ph].append(max(layer, 1e-15))
        cap.append(model.max_layers(d, s == 0, s == k - 1, k))
    if min(cap) < 1 or sum(cap) < L:
        return None
    a = [sum(weights[ph] * alpha[ph][s] for ph in phases) for s in range(k)]
    b = [sum(weights[ph] * beta[ph][s] for ph in phases) for s in range(k)]
    by_slope = sorted(range(k), key=lambda s: b[s])
    bounds = sorted({a[s] + b[s] * n for s in range(k) for n in range(1, cap[s] + 1)})
    best, best_counts, seen = math.inf, None, set()
    for B in bounds:
        caps = [min(cap[s], int((B - a[s]) / b[s] + 1e-9)) for s in range(k)]
        if min(caps) < 1 or sum(caps) < L:
            continue
        counts = [1] * k
        left = L - k
        for s in by_slope:
            add = min(left, caps[s] - 1)
            counts[s] += add
            left -= add
            if not left:
                break
        key = tuple(counts)
        if key in seen:
            continue
        seen.add(key)
        value = 0.0
        for ph in phases:
            times = [alpha[ph][s] + beta[ph][s] * counts[s] for s in range(k)]
            if ph == "decode" and model.overlap:
                value += weights[ph] * max(sum(times) + model.step_overhead_s, m * max(times))
            else:
                value += weights[ph] * (sum(times) + (m - 1) * max(times))
        if value < best - 1e-15:
            best, best_counts = value, counts
    return best_counts


def _refine(model: _Model, order: list[str], counts: list[int], score: float) -> tuple[list[int], float]:
    """Move one layer across one boundary while that raises the predicted tokens/s."""
    k = len(order)
    caps = [model.max_layers(d, s == 0, s == k - 1, k) for s, d in enumerate(order)]
    improved = True
    while improved:
        improved = False
        for i in range(k - 1):
            for give, take in ((i, i + 1), (i + 1, i)):
                if counts[give] <= 1 or counts[take] + 1 > caps[take]:
                    continue
                trial = list(counts)
                trial[give] -= 1
                trial[take] += 1
                value = model.predict(order, trial)["tokens_per_s"]
                if value > score * (1 + 1e-9):
                    counts, score, improved = trial, value, True
    return counts, score


def _orders(model: _Model, subset: tuple[str, ...], speed: dict[str, float], all_orders: bool) -> list[list[str]]:
    if len(subset) == 1:
        return [list(subset)]
    if all_orders:
        return [list(p) for p in itertools.permutations(subset)]
    fast = sorted(subset, key=lambda d: -speed[d])
    out = [fast, fast[::-1], fast[1:] + fast[:1]]
    # greedy link-aware: from the fastest, always the best-connected next device (speed breaks ties)
    chain, left = [fast[0]], set(fast[1:])
    while left:
        nxt = max(left, key=lambda d: (model.links(chain[-1], d).bandwidth, -model.links(chain[-1], d).latency_s,
                                       speed[d]))
        chain.append(nxt)
        left.remove(nxt)
    out += [chain, chain[::-1]]
    unique = []
    for o in out:
        if o not in unique:
            unique.append(o)
    return unique


def plan_llm(profile: LLMProfile, cluster: Cluster, workload: LLMWorkload = DEFAULT_WORKLOAD, *,
             devices: list[str] | None = None, cost: CostModel | None = None,
             step_overhead_s: float = STEP_OVERHEAD_S, overlap: bool = False) -> Plan:
    """The device subset, order and contiguous layer split with the highest predicted tokens/s for `workload`
    (see the module docstring), every stage within its device's memory. Devices left out get a reason in
    `notes["left_out"]`; when no device set can hold the model the plan says so (`feasible=False`)."""
    _check(profile, workload)
    names = _names(cluster, devices)
    model = _Model(profile, cluster, workload, cost, step_overhead_s, overlap)
    L, w = profile.num_layers, workload
    # per-layer decode time of each device at the workload's micro-batch: its speed for this model
    speed = {d: 1.0 / max(model.unit(d, "decode", w.requests)[0], 1e-15) for d in names}
    by_speed = sorted(names, key=lambda d: -speed[d])
    if len(names) <= EXHAUSTIVE_SUBSETS_UP_TO:
        subsets = [c for k in range(1, len(names) + 1) for c in itertools.combinations(by_speed, k)]
    else:
        subsets = [tuple(by_speed[:k]) for k in range(1, len(names) + 1)]
    all_orders = len(names) <= ALL_ORDERS_UP_TO
    weights = {"prefill": 1.0, "decode": float(w.new_tokens - 1)}
    scored: list[tuple[float, list[str], list[int]]] = []
    for subset in subsets:
        if len(subset) > L:
            continue
        m = len(model.microbatches(w.requests, len(subset)))
        for order in _orders(model, subset, speed, all_orders):
            counts = _split(model, order, weights, m)
            if counts is not None:
                scored.append((model.predict(order, counts)["tokens_per_s"], order, counts))
    if not scored:
        need = model.fixed_memory(True, True, 1) + L * model.per_layer_memory()
        total = sum(model.capacity(d) for d in names) / MEMORY_HEADROOM
        reason = (f"the model does not fit: it needs about {need / GiB:.2f} GiB (weights, KV cache for "
                  f"{w.requests} x {w.prompt_tokens + w.new_tokens} tokens, runtime) and no set of these devices "
                  f"holds it (together {total / GiB:.2f} GiB)")
        plan = best_single(profile, cluster, workload, devices=names, cost=cost, step_overhead_s=step_overhead_s,
                           overlap=overlap)
        return plan.model_copy(update={"planner": "llm-pipeline", "feasible": False, "infeasible_reason": reason,
                                       "notes": {**plan.notes, "left_out": {}}})
    scored.sort(key=lambda x: -x[0])
    # refine the best few splits one boundary at a time, keep the best
    refined = []
    for value, order, counts in scored[:8]:
        counts, value = _refine(model, order, list(counts), value)
        refined.append((value, order, counts))
    value, order, counts = max(refined, key=lambda x: x[0])
    # for each device left out: the best plan that adds it to the chosen devices (else any plan with it)
    chosen = set(order)
    best_with: dict[str, tuple[float, list[str], list[int]]] = {}
    for entry in [*refined, *scored]:
        for d in entry[1]:
            if d in chosen:
                continue
            rank = (chosen <= set(entry[1]), entry[0])
            if d not in best_with or rank > (chosen <= set(best_with[d][1]), best_with[d][0]):
                best_with[d] = entry
    left_out = {d: _why(model, d, best_with.get(d), value, order, counts) for d in names if d not in order}
    singles = [s for s in scored if len(s[1]) == 1]
    notes = {"left_out": left_out, "candidates": len(scored),
             "best_single": {"device": singles[0][1][0], "tokens_per_s": singles[0][0]} if singles else None,
             "search": ("all subsets" if len(names) <= EXHAUSTIVE_SUBSETS_UP_TO else "speed-sorted prefixes") +
                       (", every order" if all_orders else ", orders by speed and link-aware") +
                       ", bottleneck-bounded splits refined by the predictor"}
    return _plan("llm-pipeline", model, order, counts, notes)


def _why(model: _Model, device: str, with_it, chosen_value: float, order: list[str], counts: list[int]) -> str:
    """Why a device is not in the chosen plan, in words."""
    dev = model.cluster.devices[device]
    k = len(order) + 1
    if with_it is None:
        need = model.fixed_memory(False, False, k) + model.per_layer_memory()
        if need > model.capacity(device):
            return (f"does not fit: even one layer needs {need / GiB:.2f} GiB (weights, KV cache, runtime), "
                    f"it has {dev.memory_bytes / GiB:.2f} GiB")
        return "no pipeline with it fits in the devices' memory"
    value, w_order, w_counts = with_it
    text = f"adding it lowers predicted tokens/s from {chosen_value:.1f} to {value:.1f}"
    s = w_order.index(device)
    r = model.microbatches(model.workload.requests, len(w_order))[0]
    t, _ = model.stage_cost(w_order, w_counts, s, "decode", r)
    neighbours = [w_order[i] for i in (s - 1, s + 1) if 0 <= i < len(w_order)]
    link_costs = [(model.transfer(device, n, "decode", r), n) for n in neighbours]
    worst, peer = max(link_costs) if link_costs else (0.0, None)
    best_layer = min(model.unit(d, "decode", r)[0] for d in order)
    slow = model.unit(device, "decode", r)[0] / max(best_layer, 1e-15)

    def link_text() -> str:
        link = model.links(device, peer)
        return (f"link {format_bandwidth(link.bandwidth)} to {peer} costs {worst * 1e3:.2f} ms per micro-batch of "
                f"a decode step, {model.transfer(device, peer, 'prefill', r) * 1e3:.1f} ms of a prefill: {text}")

    if peer is not None and worst > t:
        return link_text()
    if slow >= 1.5:
        return (f"slower than the pipeline's bottleneck ({slow:.1f}x the fastest chosen device's time per layer): "
                f"{text}")
    if peer is not None and worst > 0.25 * t:
        return link_text()
    return ("splitting the model further costs more than it gains (each step's pipeline fill and drain, weights "
            f"read once per micro-batch, transfers; it is {slow:.1f}x the fastest chosen device's time per "
            f"layer): {text}")
