"""The real engine: a `transformers` Llama on the CPU with a paged KV cache, driven by the shared scheduler.

Why not transformers' own continuous batching (`transformers.generation.continuous_batching`, v5.23)? Its
`PagedAttentionCache` and schedulers allocate blocks on demand only, and its `OffloadingManager` decides
by itself between CPU offload and re-prefill (offload when the pinned pool has room, else "soft reset"),
evicting the newest requests; there is no hook to book KV cache ahead from predicted lengths or to pick a
victim and its preemption mode by cost. So the scheduling is ours, and so is the attention over blocks:
a function registered with transformers' `AttentionInterface` receives each layer's rotated Q/K/V from the
stock `LlamaForCausalLM` forward, writes K/V into the block pool through the block tables and attends over
the gathered blocks. Everything else (embeddings, RoPE, MLPs, norms, LM head) is transformers' code.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from edgepool.errors import SpecError
from edgepool.report import Report
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.policies import Policy, make_policy
from edgepool.serving.replay import Step, replay, run_step, trace_requests
from edgepool.serving.request import Request
from edgepool.serving.scheduler import LengthEstimator, RequestRejected, Scheduler, StepPlan
from edgepool.serving.traces import TraceRequest

ATTENTION_NAME = "edgepool_paged"


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 3..258), so the engine needs no downloaded vocabulary."""

    pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return [self.bos_id] + [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - self.offset for i in ids if i >= self.offset).decode("utf-8", errors="replace")


# Small Llama configurations (random weights: the engine serves them for timing and correctness, not prose).
MODEL_CONFIGS: dict[str, dict] = {
    "llama-tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2),
    "llama-small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4),
    "llama-base": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=4),
}


def build_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                max_positions: int = 4096) -> LlamaForCausalLM:
    if name not in MODEL_CONFIGS:
        raise SpecError(field="model", value=name, accepted=", ".join(MODEL_CONFIGS))
    config = LlamaConfig(vocab_size=ByteTokenizer.vocab_size, max_position_embeddings=max_positions,
                         bos_token_id=ByteTokenizer.bos_id, eos_token_id=ByteTokenizer.eos_id,
                         pad_token_id=ByteTokenizer.pad_id, **MODEL_CONFIGS[name])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.set_attn_implementation(ATTENTION_NAME)
    return model


# ---------------------------------------------------------------------------------------------------
# Paged attention
# ---------------------------------------------------------------------------------------------------
@dataclass
class PagedBatch:
    """Where this step's tokens go in the block pool, and what each request attends to.

    Requests decoding one token (`decode`) attend in one batched call over their blocks padded to the
    longest (masked), instead of one call per request: per-request calls cost more than the attention."""

    cache: "PagedKVCache"
    slots: torch.Tensor                  # (tokens,) flat slot of each new token
    segments: list[tuple[int, int, int, torch.Tensor]]   # (start, length, first position, slots of 0..end)
    decode: "DecodeRows | None" = None

    @classmethod
    def of(cls, cache: "PagedKVCache", slots: list[int],
           segments: list[tuple[int, int, int, list[int]]]) -> "PagedBatch":
        ones = [i for i, seg in enumerate(segments) if seg[1] == 1]
        decode = DecodeRows.of([segments[i] for i in ones], ones) if len(ones) > 1 else None
        skip = set(ones) if decode else set()
        return cls(cache, torch.tensor(slots), [(a, n, p, torch.tensor(kv)) if i not in skip else (a, n, p, None)
                                               for i, (a, n, p, kv) in enumerate(segments)], decode)


@dataclass
class DecodeRows:
    """One-token requests of a step: their rows in the packed batch, and their KV slots padded to one length."""

    segments: list[int]                  # which segments (in order) these are
    rows: torch.Tensor                   # (R,) row of each one's token in the packed batch
    kv_slots: torch.Tensor               # (R, longest) slots, padded with slot 0
    mask: torch.Tensor | None            # (R, 1, 1, longest) True where a slot is real; None if all equal

    @classmethod
    def of(cls, segments: list[tuple[int, int, int, list[int]]], indices: list[int]) -> "DecodeRows":
        longest = max(len(seg[3]) for seg in segments)
        padded = [seg[3] + [0] * (longest - len(seg[3])) for seg in segments]
        lengths = torch.tensor([len(seg[3]) for seg in segments])
        mask = None
        if int(lengths.min()) != longest:
            mask = (torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]
        return cls(indices, torch.tensor([seg[0] for seg in segments]), torch.tensor(padded), mask)


class PagedKVCache:
    """Per layer, K and V for `num_blocks * block_size` token slots, plus a bounded host pool.

    `layers`: the model layers this process holds (a pipeline stage); K/V are kept for those only, indexed
    by the layer's own index in the whole model (the `layer_idx` the attention sees)."""

    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int, num_host_blocks: int,
                 dtype: torch.dtype, layers: range | None = None):
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (num_blocks * block_size, heads, head_dim)
        host_shape = (max(num_host_blocks, 1) * block_size, heads, head_dim)
        self.block_size = block_size
        self.layers = layers if layers is not None else range(config.num_hidden_layers)
        self.k = {i: torch.zeros(shape, dtype=dtype) for i in self.layers}
        self.v = {i: torch.zeros(shape, dtype=dtype) for i in self.layers}
        self.host_k = {i: torch.zeros(host_shape, dtype=dtype) for i in self.layers}
        self.host_v = {i: torch.zeros(host_shape, dtype=dtype) for i in self.layers}
        self.bytes_per_block = kv_bytes_per_block(config, block_size, len(self.layers), dtype)

    def _copy(self, pairs: list[tuple[int, int]], src: dict[int, torch.Tensor], dst: dict[int, torch.Tensor]) -> None:
        if not pairs:
            return
        bs = self.block_size
        src_idx = torch.tensor([s * bs + o for s, _ in pairs for o in range(bs)])
        dst_idx = torch.tensor([d * bs + o for _, d in pairs for o in range(bs)])
        for layer in self.layers:
            dst[layer].index_copy_(0, dst_idx, src[layer].index_select(0, src_idx))

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        self._copy(pairs, self.k, self.host_k)
        self._copy(pairs, self.v, self.host_v)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        self._copy(pairs, self.host_k, self.k)
        self._copy(pairs, self.host_v, self.v)


def kv_bytes_per_block(config: LlamaConfig, block_size: int, num_layers: int, dtype: torch.dtype) -> int:
    """Bytes of K and V for one block of `block_size` tokens over `num_layers` layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * num_layers * block_size * config.num_key_value_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, paged=None, **kwargs):
    """Attention for a packed batch (batch dim 1): store this step's K/V in blocks, attend over blocks."""
    if paged is None:
        raise RuntimeError(f"attn_implementation={ATTENTION_NAME!r} needs the `paged=PagedBatch` argument")
    layer = module.layer_idx
    k_pool, v_pool = paged.cache.k[layer], paged.cache.v[layer]
    k_pool.index_copy_(0, paged.slots, key[0].transpose(0, 1).to(k_pool.dtype))
    v_pool.index_copy_(0, paged.slots, value[0].transpose(0, 1).to(v_pool.dtype))
    outputs: list[torch.Tensor | None] = []
    for start, length, first_pos, kv_slots in paged.segments:
        if kv_slots is None:   # decoded below, with the other one-token requests
            outputs.append(None)
            continue
        q = query[:, :, start:start + length]
        k = k_pool.index_select(0, kv_slots).transpose(0, 1).unsqueeze(0)
        v = v_pool.index_select(0, kv_slots).transpose(0, 1).unsqueeze(0)
        if length == 1:
            mask = None
        else:
            positions = torch.arange(first_pos, first_pos + length).unsqueeze(1)
            mask = torch.arange(kv_slots.numel()).unsqueeze(0) <= positions
        outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True))
    if paged.decode is not None:
        rows = paged.decode
        q = query[0, :, rows.rows].transpose(0, 1).unsqueeze(2)               # (R, heads, 1, head_dim)
        k = k_pool[rows.kv_slots].transpose(1, 2)                             # (R, kv_heads, longest, head_dim)
        v = v_pool[rows.kv_slots].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rows.mask, scale=scaling, enable_gqa=True)
        for j, i in enumerate(rows.segments):
            outputs[i] = out[j:j + 1]                                         # (1, heads, 1, head_dim)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, paged_attention)


# ---------------------------------------------------------------------------------------------------
# Executor and engine
# ---------------------------------------------------------------------------------------------------
class MeasuredStepCost:
    """Step and copy times of this engine (linear in computed tokens and in blocks), calibrated on start-up."""

    def __init__(self, per_step_s: float, per_token_s: float, per_block_copy_s: float):
        self.per_step_s, self.per_token_s, self.per_block_copy_s = per_step_s, per_token_s, per_block_copy_s

    def step_time(self, compute_tokens: int, num_requests: int, context_tokens: int) -> float:
        return self.per_step_s + self.per_token_s * compute_tokens

    def copy_time(self, num_blocks: int) -> float:
        return self.per_block_copy_s * num_blocks


@dataclass
class StepInputs:
    """One forward pass's inputs for a list of requests, as plain lists (they travel to pipeline stages).

    Tokens of all requests are packed in one row: request i's new tokens are `ids[start:start+length]` at
    positions `first_pos..`, written to `slots` and attending over `kv_slots` (its positions 0..end)."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    segments: list[tuple[int, int, int, list[int]]]   # (start, length, first position, kv slots)
    last: list[int]                                    # index in the row of each request's last token
    sampling: list[tuple[float, int | None, int]]      # (temperature, seed, tokens generated so far)

    def paged(self, cache: "PagedKVCache") -> PagedBatch:
        return PagedBatch.of(cache, self.slots, self.segments)


def step_inputs(requests: list[Request], blocks: BlockManager) -> StepInputs:
    """Where each request's uncomputed tokens go in the block pool (tables from the block manager)."""
    bs = blocks.block_size

    def slots(request_id: str, start: int, end: int) -> list[int]:
        table = blocks.table(request_id)
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    inputs = StepInputs([], [], [], [], [], [])
    for request in requests:
        start, end = request.num_computed, request.total_tokens
        inputs.ids.extend(request.input_ids_to_compute())
        inputs.positions.extend(range(start, end))
        inputs.slots.extend(slots(request.request_id, start, end))
        inputs.segments.append((len(inputs.ids) - (end - start), end - start, start, slots(request.request_id, 0, end)))
        inputs.last.append(len(inputs.ids) - 1)
        inputs.sampling.append((request.temperature, request.seed, request.num_generated))
    return inputs


def sample_token(logits: torch.Tensor, temperature: float, seed: int | None, position: int) -> int:
    """Greedy at temperature 0; else seeded per (request, position): a recomputed request resamples the same."""
    if temperature <= 0:
        return int(logits.argmax())
    generator = torch.Generator().manual_seed((seed or 0) * 1_000_003 + position)
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_tokens(logits: torch.Tensor, inputs: StepInputs) -> list[int]:
    """One token per request from its row of `logits` (requests in the order of `inputs`)."""
    return [sample_token(logits[i], t, seed, n) for i, (t, seed, n) in enumerate(inputs.sampling)]


class ModelExecutor:
    """Runs a `StepPlan` in this process: block copies for swaps, then one forward pass over every request."""

    def __init__(self, model: LlamaForCausalLM, blocks: BlockManager, dtype: torch.dtype = torch.float32):
        self.model, self.blocks = model, blocks
        self.cache = PagedKVCache(model.config, blocks.num_blocks, blocks.block_size, blocks.num_host_blocks, dtype)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> dict[str, int]:
        self.cache.swap_out(plan.swap_out)
        self.cache.swap_in(plan.swap_in)
        if not plan.batch:
            return {}
        inputs = step_inputs(plan.batch, self.blocks)
        hidden = self.model.model(input_ids=torch.tensor([inputs.ids]), position_ids=torch.tensor([inputs.positions]),
                                  paged=inputs.paged(self.cache), use_cache=False).last_hidden_state
        logits = self.model.lm_head(hidden[0, inputs.last]).float()
        return {r.request_id: t for r, t in zip(plan.batch, sample_tokens(logits, inputs))}


@dataclass
class EngineConfig:
    model: str = "llama-small"
    policy: str = "vllm"
    num_blocks: int = 64
    block_size: int = 8
    num_host_blocks: int = 64
    max_batch_requests: int = 32
    max_batch_tokens: int = 1024
    max_waiting: int | None = 256
    seed: int = 0
    dtype: str = "float32"
    policy_options: dict | None = None


class PoolChanged(Exception):
    """The executor lost or gained devices: every KV cache is gone, and the pool now has `num_blocks` blocks.
    Recoverable: the engine requeues every live request to recompute from its tokens (none is lost)."""

    def __init__(self, message: str, num_blocks: int):
        super().__init__(message)
        self.num_blocks = num_blocks


class Engine:
    """Continuous batching over the paged cache. `step()` is one scheduler decision plus one forward.

    By default the model runs in this process (`ModelExecutor`); a pooled executor (`edgepool.llm.pool`)
    runs it as pipeline stages on other devices instead, with the same scheduler, blocks and policies.
    """

    def __init__(self, config: EngineConfig | None = None, predictor: LengthEstimator | None = None,
                 model: LlamaForCausalLM | None = None, policy: Policy | None = None, *,
                 tokenizer=None, executor=None, model_config: LlamaConfig | None = None):
        self.config = config = config or EngineConfig()
        if config.dtype not in ("float32", "float64", "bfloat16"):
            raise SpecError(field="dtype", value=config.dtype, accepted="float32, float64, bfloat16")
        dtype = getattr(torch, config.dtype)
        self.tokenizer = tokenizer or ByteTokenizer()
        self.blocks = BlockManager(config.num_blocks, config.block_size, config.num_host_blocks)
        if executor is None:
            self.model = model or build_model(config.model, seed=config.seed, dtype=dtype)
            executor = ModelExecutor(self.model, self.blocks, dtype)
        else:
            self.model = model
        self.model_config = model_config or self.model.config
        self.executor = executor
        executor.blocks = self.blocks   # a pooled executor reads the block tables of the engine's manager
        self.policy = policy or make_policy(config.policy, **(config.policy_options or {}))
        self.cost = self._calibrate()
        self.generated_tokens = 0  # tokens produced since start, every request together (a live tokens/s)
        self.scheduler = Scheduler(self.policy, self.blocks, max_batch_requests=config.max_batch_requests,
                                   max_batch_tokens=config.max_batch_tokens, max_waiting=config.max_waiting,
                                   cost=self.cost, predictor=predictor if self.policy.uses_predictor else None)

    def _calibrate(self) -> MeasuredStepCost:
        """Time a 1-token and a 64-token step and a block copy, on scratch blocks given back afterwards."""
        bs = self.blocks.block_size
        tokens = min(64, (self.blocks.num_blocks - 1) * bs)
        probe = Request("calibration", prompt_len=tokens, max_new_tokens=1, prompt_tokens=[3] * tokens)
        self.blocks.allocate(probe.request_id, self.blocks.blocks_for(tokens))
        timings = {}
        for n in (1, tokens):
            probe.prompt_len, probe.prompt_tokens, probe.num_computed = n, [3] * n, 0
            self.executor.execute(StepPlan(batch=[probe]))          # warm-up
            start = time.perf_counter()
            self.executor.execute(StepPlan(batch=[probe]))
            timings[n] = time.perf_counter() - start
        table = self.blocks.table(probe.request_id)
        pairs = list(zip(table, range(min(len(table), self.blocks.num_host_blocks))))
        start = time.perf_counter()
        self.executor.execute(StepPlan(swap_out=pairs))
        per_block = (time.perf_counter() - start) / max(len(pairs), 1)
        self.blocks.free(probe.request_id)
        per_token = max(timings[tokens] - timings[1], 0.0) / max(tokens - 1, 1)
        return MeasuredStepCost(timings[1], per_token, per_block)

    # --- requests --------------------------------------------------------------------------------
    def make_request(self, request_id: str, prompt: str | list[int], max_new_tokens: int, *,
                     temperature: float = 0.0, seed: int | None = None, stop_at_eos: bool = True,
                     arrival_time: float = 0.0) -> Request:
        tokens = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return Request(request_id=request_id, prompt_len=len(tokens), max_new_tokens=max_new_tokens,
                       arrival_time=arrival_time, prompt_tokens=tokens,
                       prompt_text=prompt if isinstance(prompt, str) else "",
                       eos_token_id=self.tokenizer.eos_id if stop_at_eos else None,
                       temperature=temperature, seed=seed)

    def add(self, request: Request) -> None:
        """Queue a request; raises RequestRejected (400 never fits, 503 queue full)."""
        vocab = self.model_config.vocab_size
        if request.prompt_tokens and (max(request.prompt_tokens) >= vocab or min(request.prompt_tokens) < 0):
            bad = max(request.prompt_tokens) if max(request.prompt_tokens) >= vocab else min(request.prompt_tokens)
            raise RequestRejected(400, f"{request.request_id}: token id {bad} is outside the vocabulary "
                                       f"(0..{vocab - 1})")
        self.scheduler.add(request)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def execute(self, plan: StepPlan) -> tuple[dict[str, int], float]:
        """Run a plan on the model: the new token per request and the seconds it took (copies included):
        CPU time in this process, or wall time when the model runs elsewhere (a pool's stages)."""
        clock = time.process_time if isinstance(self.executor, ModelExecutor) else time.perf_counter
        start = clock()
        try:
            tokens = self.executor.execute(plan)
        except PoolChanged:
            raise
        except Exception as error:            # never lose a request silently: fail the batch explicitly
            for request in list(plan.batch):
                self.scheduler.abort(request, f"engine error: {error!r}")
            raise
        return tokens, clock() - start

    def step(self, now: float = 0.0) -> Step:
        """One step: the plan, the new token per request, the finished requests and its time. When the pool
        changed under it, the step produces nothing and every live request recomputes from its tokens."""
        try:
            step = run_step(self.scheduler, self, now)
            self.generated_tokens += len(step.tokens or {})
            return step
        except PoolChanged as changed:
            self.blocks = BlockManager(changed.num_blocks, self.config.block_size, self.config.num_host_blocks)
            self.executor.blocks = self.blocks
            requeued = self.scheduler.restart_all(self.blocks)
            events = getattr(self.executor, "events", None)
            if events:
                events[-1].requeued = len(requeued)
            return Step(StepPlan(), {}, self._fit_to_pool(requeued), 0.0)

    def _fit_to_pool(self, requests: list[Request]) -> list[Request]:
        """After a re-plan to a smaller KV cache: a request whose tokens no longer fit ends here, finished with
        every token it has; the others may still generate only what fits. Returns the ended ones."""
        capacity = self.scheduler.capacity_tokens
        ended = []
        for request in requests:
            if request.total_tokens > capacity:
                self.scheduler.finish_early(request)
                ended.append(request)
            else:
                request.max_new_tokens = min(request.max_new_tokens, capacity + 1 - request.prompt_len)
        return ended

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy generation for a list of token-id prompts (all admitted at once); for tests and examples."""
        requests = [self.make_request(f"g{i}", p, max_new_tokens, stop_at_eos=False) for i, p in enumerate(prompts)]
        for request in requests:
            self.add(request)
        while self.has_work():
            self.step()
        return [r.output_tokens for r in requests]

    def run_trace(self, trace: list[TraceRequest], prefix: str = "t") -> Report:
        """Replay a trace on a clock made of measured step CPU times (see docs: robust to a shared machine)."""
        def tokenize(t: TraceRequest) -> list[int]:
            tokens = self.tokenizer.encode(t.prompt)[:t.prompt_len]
            return tokens + [self.tokenizer.offset + 32] * (t.prompt_len - len(tokens))

        wall = time.perf_counter()
        result = replay(trace_requests(trace, prefix, tokenize), self.scheduler, self, admit=self.add)
        where = f"{platform.node()} ({platform.machine()} CPU, {torch.get_num_threads()} torch threads): " \
                f"{self.config.model} ({self.config.dtype}, random weights), {self.blocks.num_blocks} KV blocks of " \
                f"{self.blocks.block_size} tokens; clock = sum of measured step CPU times"
        return result.report(source="measured", where=where, device="cpu", model=self.config.model,
                             extra={**self.policy.describe(), "wall_s": time.perf_counter() - wall})
