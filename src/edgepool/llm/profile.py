"""`LLMProfile`: a decoder-only LLM (Llama family) as the pipeline planner sees it, and its time model.

Sizes come from the model's config (`LLMProfile.from_config`); per-token costs of one decoder layer and of the
head can also be measured on this host (`measure_host`), with one torch thread, which is what a testbed worker
runs on. `stage_time` is the time of one pipeline stage's forward pass over a micro-batch:

- a device of the emulated testbed (its `sources` say "emulated": one host core scaled by its CPU quota),
  when the profile carries host measurements: measured host time / the device's speed relative to one host
  core (`costmodel.device_speed`-style effective FLOP/s ratio, the same number the testbed sizes quotas by);
- any other device: a roofline, max(FLOPs / (peak fp32 x efficiency), bytes read / memory bandwidth), for
  the layers (weights once per pass + KV cache reads), the embedding lookup and the head separately.

All sizes are fp32 (4 bytes per value): the runtime runs fp32 checkpoints.
"""
from __future__ import annotations

import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgepool.costmodel import CostModel
from edgepool.device import Device, PowerMode

DTYPE_BYTES = 4  # fp32
MEASURE_TOKENS = (1, 4, 16, 64)


class LLMProfile(BaseModel):
    """A Llama-family decoder: L transformer layers between an embedding and a head (final norm + LM head)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "llm"
    num_layers: int = Field(gt=0, description="transformer layers")
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    layer_param_bytes: float = Field(gt=0, description="one decoder layer's weights, fp32 bytes")
    layer_flops_per_token: float = Field(gt=0, description="2 x the layer's matmul parameters, per token")
    attn_flops_per_context_token: float = Field(
        ge=0, description="per token and per cached token it attends to: QK^T and AV, 4 x heads x head_dim")
    kv_bytes_per_token_layer: float = Field(gt=0, description="2 x kv_heads x head_dim x 4")
    embed_bytes: float = Field(gt=0, description="embedding table, fp32 bytes (stage 0 holds it)")
    head_bytes: float = Field(gt=0, description="final norm + LM head weights (the last stage holds them, tied "
                                                "or not)")
    head_flops_per_token: float = Field(gt=0, description="2 x vocab x hidden per sampled position")
    # measured on a host (None: not measured): seconds = a + b * tokens, one torch thread
    host_layer_s: tuple[float, float] | None = Field(default=None, description="a decode step: n requests of "
                                                     "one token each, through the engine's paged attention")
    host_prefill_layer_s: tuple[float, float] | None = Field(default=None, description="one sequence of n "
                                                             "tokens (a prefill)")
    host_head_s: tuple[float, float] | None = None
    host_flops: float | None = Field(default=None, description="effective FLOP/s of the host core measured "
                                     "with them (peak x efficiency of `testbed.host_core_device`)")
    host_measured: dict[str, Any] = Field(default_factory=dict, description="where and when, the raw times")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> "LLMProfile":
        """From a `transformers` LlamaConfig (or any config with the same attribute names, or a dict)."""
        get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (
            lambda k, d=None: getattr(config, k, d))
        hidden = int(get("hidden_size"))
        inter = int(get("intermediate_size"))
        heads = int(get("num_attention_heads"))
        kv_heads = int(get("num_key_value_heads") or heads)
        head_dim = int(get("head_dim") or hidden // heads)
        vocab = int(get("vocab_size"))
        layers = int(get("num_hidden_layers"))
        bias = bool(get("attention_bias", False))
        mlp_bias = bool(get("mlp_bias", False))
        q, kv = heads * head_dim, kv_heads * head_dim
        attn = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv + hidden) if bias else 0)
        mlp = 3 * hidden * inter + ((2 * inter + hidden) if mlp_bias else 0)
        matmul = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * inter
        params = attn + mlp + 2 * hidden  # two RMSNorm weights
        name = name or get("_name_or_path") or get("_model_name_or_path") or get("model_type") or "llm"
        return cls(name=str(name), num_layers=layers, hidden_size=hidden, intermediate_size=inter, num_heads=heads,
                   kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
                   tie_word_embeddings=bool(get("tie_word_embeddings", False)),
                   layer_param_bytes=float(params * DTYPE_BYTES), layer_flops_per_token=float(2 * matmul),
                   attn_flops_per_context_token=float(4 * heads * head_dim),
                   kv_bytes_per_token_layer=float(2 * kv * DTYPE_BYTES),
                   embed_bytes=float(vocab * hidden * DTYPE_BYTES),
                   head_bytes=float((vocab * hidden + hidden) * DTYPE_BYTES),
                   head_flops_per_token=float(2 * vocab * hidden))

    @classmethod
    def from_pretrained(cls, folder: str | Path, name: str | None = None) -> "LLMProfile":
        """From a Hugging Face checkpoint folder's config.json (no weights read)."""
        from transformers import AutoConfig

        return cls.from_config(AutoConfig.from_pretrained(str(folder)), name=name or Path(folder).name)

    # ------------------------------------------------------------------ sizes
    @property
    def hidden_bytes_per_token(self) -> float:
        """What travels between stages per token: fp32 hidden states."""
        return float(self.hidden_size * DTYPE_BYTES)

    @property
    def total_param_bytes(self) -> float:
        """The checkpoint's weights (a tied head shares the embedding's)."""
        head = self.hidden_size * DTYPE_BYTES if self.tie_word_embeddings else self.head_bytes
        return self.embed_bytes + self.num_layers * self.layer_param_bytes + head

    @property
    def measured(self) -> bool:
        return self.host_layer_s is not None and self.host_head_s is not None and bool(self.host_flops)


# ----------------------------------------------------------------------------- measurement
def _fit(ns: list[int], ts: list[float]) -> tuple[float, float]:
    """Least squares a + b n on relative error (small n, a decode step, matters as much as large), a, b >= 0."""
    w = [1.0 / max(t, 1e-12) ** 2 for t in ts]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, ns)) / sw
    my = sum(wi * y for wi, y in zip(w, ts)) / sw
    var = sum(wi * (x - mx) ** 2 for wi, x in zip(w, ns))
    b = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, ns, ts)) / var if var else 0.0
    b = max(b, 0.0)
    a = max(my - b * mx, 0.0)
    if a == 0.0 and b == 0.0:
        b = my / max(mx, 1e-9)
    return a, b


def _best(fn, budget_s: float, min_reps: int = 3, max_reps: int = 20) -> float:
    """Fastest of repeated runs (one warm-up), stopping early when the budget for this point is spent."""
    fn()
    best, start, reps = math.inf, time.perf_counter(), 0
    while reps < min_reps or (reps < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def measure_host(model: Any, profile: LLMProfile | None = None, *, tokens: tuple[int, ...] = MEASURE_TOKENS,
                 host: Device | None = None, budget_s: float = 4.0) -> LLMProfile:
    """Time one real decoder layer and the head (final norm + LM head) on this host, one torch thread.

    `model`: a loaded `LlamaForCausalLM` or a checkpoint folder (loaded in fp32). For each n in `tokens`, a
    sequence of n tokens goes through layer 0 (no KV cache: what a prefill or a decode micro-batch of n
    requests costs, apart from attention over the cache, which `stage_time` adds by FLOPs) and through the
    head; `a + b*n` is fitted for each. `host`: the host-core `Device` the emulated cluster was built from
    (`testbed.host_core_device()`); measured here if not given. Returns the profile with `host_layer_s`,
    `host_head_s`, `host_flops` and `host_measured` (where, when, raw times) set. Takes about `budget_s`
    seconds, loading aside.
    """
    import torch

    from edgepool.local_device import torch_threads

    if isinstance(model, (str, Path)):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    model.eval()
    config = model.config
    profile = profile or LLMProfile.from_config(config)
    with torch_threads(1):
        if host is None:
            from edgepool.testbed.testbed import host_core_device

            host = host_core_device()
        inner = model.model
        layer = inner.layers[0]
        norm, head = inner.norm, model.lm_head
        per_point = budget_s / (3 * len(tokens))
        layer_t, prefill_t, head_t = [], [], []
        with torch.inference_mode():
            for n in tokens:
                x = torch.randn(1, n, config.hidden_size, dtype=torch.float32)
                pos = torch.arange(n).unsqueeze(0)
                rope = inner.rotary_emb(x, position_ids=pos)
                prefill_t.append(_best(lambda: layer(x, attention_mask=None, position_ids=pos,
                                                     position_embeddings=rope), per_point))
                head_t.append(_best(lambda: head(norm(x)), per_point))
                layer_t.append(_best(_paged_decode(model, n), per_point))
    ns = list(tokens)
    return profile.model_copy(update={
        "host_layer_s": _fit(ns, layer_t), "host_prefill_layer_s": _fit(ns, prefill_t),
        "host_head_s": _fit(ns, head_t),
        "host_flops": host.peak("fp32") * host.efficiency,
        "host_measured": {"where": f"{platform.node()} ({host.description or 'this host'}), 1 torch thread",
                          "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "tokens": ns, "layer_s": layer_t, "prefill_layer_s": prefill_t, "head_s": head_t,
                          "decode_context": DECODE_CONTEXT,
                          "host_peak_fp32": host.peak("fp32"), "host_efficiency": host.efficiency}})


DECODE_CONTEXT = 64  # cached tokens per request when timing a decode step


def _paged_decode(model: Any, requests: int):
    """A call running layer 0 for `requests` requests decoding one token each after DECODE_CONTEXT cached
    tokens, the way the engine does (paged attention over a block pool)."""
    import copy

    import torch

    from edgepool.serving.block_manager import BlockManager
    from edgepool.serving.engine import ATTENTION_NAME, PagedKVCache, step_inputs
    from edgepool.serving.request import Request

    config = copy.deepcopy(model.config)
    config._attn_implementation = ATTENTION_NAME
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    layer = LlamaDecoderLayer(config, layer_idx=0)
    layer.load_state_dict(model.model.layers[0].state_dict())
    layer.eval()
    block = 16
    blocks = BlockManager(requests * (DECODE_CONTEXT // block + 1), block)
    batch = []
    for i in range(requests):
        request = Request(f"r{i}", prompt_len=DECODE_CONTEXT + 1, max_new_tokens=1,
                          prompt_tokens=[0] * (DECODE_CONTEXT + 1), num_computed=DECODE_CONTEXT)
        blocks.allocate(request.request_id, blocks.blocks_for(DECODE_CONTEXT + 1))
        batch.append(request)
    inputs = step_inputs(batch, blocks)
    paged = inputs.paged(PagedKVCache(config, blocks.num_blocks, block, 0, torch.float32, layers=range(1)))
    x = torch.randn(1, requests, config.hidden_size)
    pos = torch.tensor([inputs.positions])
    rope = model.model.rotary_emb(x, position_ids=pos)
    return lambda: layer(x, position_ids=pos, position_embeddings=rope, paged=paged)


# ----------------------------------------------------------------------------- device time model
def is_emulated(device: Device) -> bool:
    """A device of the emulated testbed (`testbed.emulated_cluster`): one host core scaled by its CPU share."""
    return "emulated" in device.sources


def relative_speed(profile: LLMProfile, device: Device, cost: CostModel | None = None,
                   mode: PowerMode | None = None) -> float:
    """The device's effective FLOP/s over the measured host core's (what its CPU quota gives it)."""
    cost = cost or CostModel()
    return cost.effective_flops(device, "fp32", mode) / float(profile.host_flops)


def uses_host_times(profile: LLMProfile, device: Device) -> bool:
    return profile.measured and is_emulated(device)


def stage_time(profile: LLMProfile, device: Device, num_layers: int, has_head: bool, has_embed: bool,
               tokens: int, *, sequences: int | None = None, context: float = 0.0, cost: CostModel | None = None,
               mode: PowerMode | None = None) -> float:
    """Seconds one stage takes for one micro-batch's forward pass.

    `tokens`: tokens computed (decode: one per request; prefill: the prompts' tokens). `sequences`: requests in
    the micro-batch (default `tokens`): the head computes one logit row per request (the runtime samples the
    last position only) and each request's new tokens attend to `context` cached tokens on average.
    """
    if tokens <= 0:
        return 0.0
    cost = cost or CostModel()
    seqs = tokens if sequences is None else sequences
    attn_flops = num_layers * tokens * context * profile.attn_flops_per_context_token
    layer_flops = num_layers * tokens * profile.layer_flops_per_token
    overhead = cost.layer_overhead_s.get(device.name, 0.0) * num_layers
    if uses_host_times(profile, device):
        speed = relative_speed(profile, device, cost, mode)
        prefill = seqs < tokens and profile.host_prefill_layer_s is not None
        a, b = profile.host_prefill_layer_s if prefill else profile.host_layer_s
        t = num_layers * (a + b * tokens)
        # attention over the cache at the measured layer's FLOP rate
        rate = profile.layer_flops_per_token / b if b > 0 else float(profile.host_flops)
        t += attn_flops / rate
        if has_head:
            ha, hb = profile.host_head_s
            t += ha + hb * seqs
        if has_embed:
            t += tokens * profile.hidden_bytes_per_token / max(device.memory_bandwidth, 1.0)
        return t / speed + overhead
    # roofline, per part
    kv_bytes = num_layers * seqs * (tokens / max(seqs, 1) + context) * profile.kv_bytes_per_token_layer
    act_bytes = 2 * num_layers * tokens * profile.hidden_bytes_per_token
    t = cost.compute_time(layer_flops + attn_flops, num_layers * profile.layer_param_bytes + kv_bytes + act_bytes,
                          device, "fp32", mode) if num_layers else 0.0
    if has_head:
        t += cost.compute_time(seqs * profile.head_flops_per_token, profile.head_bytes, device, "fp32", mode)
    if has_embed:
        t += tokens * profile.hidden_bytes_per_token / device.memory_bandwidth
    return t + overhead
