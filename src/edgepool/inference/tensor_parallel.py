"""Tensor (+ sequence) parallel Transformer layers built from `transformers` BERT, GPT-2 and Llama layers.

A device of a tensor-parallel group keeps only its attention heads (query heads; the key/value heads those
need, so uneven splits of grouped-query attention work too) and its columns of the MLP's first matrix / rows of
its second, sliced from the Hugging Face layer's own weights; the layer norms are the Hugging Face modules
themselves. Splits follow `shares` and may be uneven.

Two ways to run a layer on a group (Galaxy, arXiv 2405.17245, sections 3-4):
- `tensor` (Megatron-LM style): every device holds the whole sequence; the partial outputs of the attention
  and MLP blocks are summed with gloo's all-reduce, and layer norm / residual run, replicated, on every device.
- `tensor+sequence` (Galaxy's hybrid): between the tensor-parallel blocks each device holds only its share of
  the sequence rows and runs layer norm / residual / dropout on them; an all-gather brings the full sequence
  before a block and a reduce-scatter brings each device its rows' sums after it. Both are tiled
  (`collectives.TiledExchange`): projections of tile k run while later tiles are still in flight, and partial
  sums of tile k travel while tile k+1 is computed.

Dropout: inference runs in eval mode, where dropout is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgepool.inference.collectives import Communicator, SequenceLayout, TiledExchange, split_counts

MODES = ("single", "tensor", "tensor+sequence")


def model_family(bundle) -> str:
    """bert, gpt2 or llama, from the Hugging Face model inside a zoo bundle."""
    name = type(bundle.hf_model).__name__ if bundle.hf_model is not None else ""
    for family, prefix in (("bert", "Bert"), ("gpt2", "GPT2"), ("llama", "Llama")):
        if name.startswith(prefix):
            return family
    raise ValueError(f"model {bundle.name!r} ({name or 'not a transformers model'}) has no tensor-parallel "
                     "implementation; supported: BERT, GPT-2 and Llama models of the zoo")


@dataclass(frozen=True)
class ShardRange:
    """What one member owns: query heads [q_lo, q_hi) and MLP columns [c_lo, c_hi)."""

    q_lo: int
    q_hi: int
    c_lo: int
    c_hi: int


def shard_ranges(num_heads: int, intermediate: int, shares: list[float]) -> list[ShardRange]:
    heads = split_counts(num_heads, shares)
    cols = split_counts(intermediate, shares)
    out, h0, c0 = [], 0, 0
    for h, c in zip(heads, cols):
        out.append(ShardRange(h0, h0 + h, c0, c0 + c))
        h0, c0 = h0 + h, c0 + c
    return out


def _rows(weight: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return weight[lo:hi].detach().clone()


def _bias(bias: torch.Tensor | None, lo: int | None = None, hi: int | None = None) -> torch.Tensor | None:
    if bias is None:
        return None
    return (bias if lo is None else bias[lo:hi]).detach().clone()


class ShardedAttention(nn.Module):
    """This member's heads of one self-attention block; `out_partial` gives its share of the output sum."""

    def __init__(self, q: tuple, k: tuple, v: tuple, o_weight: torch.Tensor, o_bias: torch.Tensor | None,
                 head_dim: int, q_range: tuple[int, int], group: int, causal: bool, rotary: nn.Module | None):
        super().__init__()
        self.head_dim, self.causal, self.rotary = head_dim, causal, rotary
        q_lo, q_hi = q_range
        self.num_q = q_hi - q_lo
        kv_lo = q_lo // group
        kv_hi = -(-q_hi // group) if self.num_q else kv_lo
        self.num_kv = kv_hi - kv_lo
        d = head_dim
        self.q_w, self.q_b = _rows(q[0], q_lo * d, q_hi * d), _bias(q[1], q_lo * d, q_hi * d)
        self.k_w, self.k_b = _rows(k[0], kv_lo * d, kv_hi * d), _bias(k[1], kv_lo * d, kv_hi * d)
        self.v_w, self.v_b = _rows(v[0], kv_lo * d, kv_hi * d), _bias(v[1], kv_lo * d, kv_hi * d)
        self.o_w = o_weight[:, q_lo * d:q_hi * d].detach().clone()  # row-parallel: input columns of o_proj
        self.o_b = _bias(o_bias)
        self.kv_index = torch.tensor([(q_lo + j) // group - kv_lo for j in range(self.num_q)], dtype=torch.long)
        self.kv_identity = group == 1
        self.cache_k: torch.Tensor | None = None
        self.cache_v: torch.Tensor | None = None
        self.use_cache = False

    @property
    def past_len(self) -> int:
        return 0 if self.cache_k is None else self.cache_k.shape[2]

    def reset_cache(self) -> None:
        self.cache_k = self.cache_v = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value of rows `x` for this member's heads, flat: (B, rows, heads*d)."""
        return F.linear(x, self.q_w, self.q_b), F.linear(x, self.k_w, self.k_b), F.linear(x, self.v_w, self.v_b)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of all rows (the whole new sequence) over the cache and themselves: (B, S, heads*d)."""
        b, s, _ = q.shape
        if self.num_q == 0:
            return q.new_zeros(b, s, 0)
        d, past = self.head_dim, self.past_len
        q = q.view(b, s, self.num_q, d).transpose(1, 2)
        k = k.view(b, s, self.num_kv, d).transpose(1, 2)
        v = v.view(b, s, self.num_kv, d).transpose(1, 2)
        if self.rotary is not None:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
            positions = torch.arange(past, past + s).unsqueeze(0)
            cos, sin = self.rotary(v, positions)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if self.cache_k is not None:
            k = torch.cat([self.cache_k, k], dim=2)
            v = torch.cat([self.cache_v, v], dim=2)
        if self.use_cache:
            self.cache_k, self.cache_v = k, v
        if not self.kv_identity:  # grouped-query attention: each local query head reads its key/value head
            k, v = k[:, self.kv_index], v[:, self.kv_index]
        mask, causal = None, False
        if self.causal and s > 1:
            if past == 0:
                causal = True
            else:
                mask = torch.ones(s, past + s, dtype=torch.bool).tril(diagonal=past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=d ** -0.5)
        return out.transpose(1, 2).reshape(b, s, self.num_q * d)

    def out_partial(self, ctx: torch.Tensor) -> torch.Tensor:
        if self.num_q == 0:
            return ctx.new_zeros(*ctx.shape[:-1], self.o_w.shape[0])
        return F.linear(ctx, self.o_w)


class ShardedMLP(nn.Module):
    """This member's columns of the MLP: up (and gate) column-parallel, down row-parallel."""

    def __init__(self, up: tuple, down_weight: torch.Tensor, down_bias: torch.Tensor | None, act: nn.Module,
                 cols: tuple[int, int], gate: tuple | None = None):
        super().__init__()
        lo, hi = cols
        self.up_w, self.up_b = _rows(up[0], lo, hi), _bias(up[1], lo, hi)
        self.gate_w = _rows(gate[0], lo, hi) if gate else None
        self.gate_b = _bias(gate[1], lo, hi) if gate else None
        self.down_w = down_weight[:, lo:hi].detach().clone()
        self.down_b = _bias(down_bias)
        self.act = act

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        if self.up_w.shape[0] == 0:
            return x.new_zeros(*x.shape[:-1], self.down_w.shape[0])
        up = F.linear(x, self.up_w, self.up_b)
        hidden = self.act(F.linear(x, self.gate_w, self.gate_b)) * up if self.gate_w is not None else self.act(up)
        return F.linear(hidden, self.down_w)


class ShardedLayer(nn.Module):
    """One Transformer layer's share on one member: norms (whole), attention heads and MLP columns (a share)."""

    def __init__(self, norm1: nn.Module, attn: ShardedAttention, norm2: nn.Module, mlp: ShardedMLP, prenorm: bool):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp, self.prenorm = norm1, attn, norm2, mlp, prenorm

    # ------------------------------------------------------------------ the two halves around each block
    def _after_attention(self, x: torch.Tensor, summed: torch.Tensor) -> torch.Tensor:
        h = x + summed if self.attn.o_b is None else x + summed + self.attn.o_b
        return h if self.prenorm else self.norm1(h)

    def _after_mlp(self, h: torch.Tensor, summed: torch.Tensor) -> torch.Tensor:
        y = h + summed if self.mlp.down_b is None else h + summed + self.mlp.down_b
        return y if self.prenorm else self.norm2(y)

    # ------------------------------------------------------------------ Megatron-style (or a single device)
    def forward_tensor(self, x: torch.Tensor, comm: Communicator | None) -> torch.Tensor:
        a_in = self.norm1(x) if self.prenorm else x
        ctx = self.attn.attend(*self.attn.project(a_in))
        partial = self.attn.out_partial(ctx)
        if comm is not None:
            comm.all_reduce(partial)
        h = self._after_attention(x, partial)
        m_in = self.norm2(h) if self.prenorm else h
        partial = self.mlp.partial(m_in)
        if comm is not None:
            comm.all_reduce(partial)
        return self._after_mlp(h, partial)

    # ------------------------------------------------------------------ Galaxy's hybrid, tiled
    def forward_hybrid(self, x_local: torch.Tensor, comm: Communicator, layout: SequenceLayout) -> torch.Tensor:
        """x_local: this member's rows of the sequence; returns the layer's output for the same rows."""
        a_in = self.norm1(x_local) if self.prenorm else x_local  # sequence-parallel region
        width = x_local.shape[-1]
        exchange = TiledExchange(comm, layout, a_in, reduce_width=width)
        b, s = x_local.shape[0], layout.total
        q = x_local.new_empty(b, s, self.attn.q_w.shape[0])
        k = x_local.new_empty(b, s, self.attn.k_w.shape[0])
        v = x_local.new_empty(b, s, self.attn.v_w.shape[0])
        for _, _, (lo, hi), rows in exchange.gathered():  # projections overlap the all-gather, tile by tile
            q[:, lo:hi], k[:, lo:hi], v[:, lo:hi] = self.attn.project(rows)
        ctx = self.attn.attend(q, k, v)
        others = [m for m in range(comm.size) if m != comm.me] + [comm.me]
        for t in range(layout.tiles):  # output projection of tile t overlaps the reduce-scatter of tile t-1
            for m in others:
                lo, hi = layout.tile(m, t)
                if hi > lo:
                    exchange.reduce_to(m, t, self.attn.out_partial(ctx[:, lo:hi]))
        h = self._after_attention(x_local, exchange.reduced())
        m_in = self.norm2(h) if self.prenorm else h
        exchange = TiledExchange(comm, layout, m_in, reduce_width=width)
        for m, t, _, rows in exchange.gathered():  # row-local MLP: each arriving tile goes back as partial sums
            exchange.reduce_to(m, t, self.mlp.partial(rows))
        return self._after_mlp(h, exchange.reduced())


def shard_layer(block: nn.Module, family: str, config, share_range: ShardRange) -> ShardedLayer:
    """This member's `ShardedLayer` of a zoo block (a `HiddenStatesLayer` / `RotaryLayer` wrapper)."""
    layer = block.layer
    q_range, cols = (share_range.q_lo, share_range.q_hi), (share_range.c_lo, share_range.c_hi)
    if family == "bert":
        sa = layer.attention.self
        d = sa.attention_head_size
        attn = ShardedAttention((sa.query.weight, sa.query.bias), (sa.key.weight, sa.key.bias),
                                (sa.value.weight, sa.value.bias), layer.attention.output.dense.weight,
                                layer.attention.output.dense.bias, d, q_range, 1, causal=False, rotary=None)
        mlp = ShardedMLP((layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                         layer.output.dense.weight, layer.output.dense.bias,
                         layer.intermediate.intermediate_act_fn, cols)
        return ShardedLayer(layer.attention.output.LayerNorm, attn, layer.output.LayerNorm, mlp, prenorm=False)
    if family == "gpt2":
        a = layer.attn
        hsz, d = a.embed_dim, a.head_dim
        w, bias = a.c_attn.weight.t(), a.c_attn.bias  # Conv1D stores (in, out)
        attn = ShardedAttention((w[:hsz], bias[:hsz]), (w[hsz:2 * hsz], bias[hsz:2 * hsz]),
                                (w[2 * hsz:], bias[2 * hsz:]), a.c_proj.weight.t(), a.c_proj.bias, d, q_range, 1,
                                causal=True, rotary=None)
        mlp = ShardedMLP((layer.mlp.c_fc.weight.t(), layer.mlp.c_fc.bias), layer.mlp.c_proj.weight.t(),
                         layer.mlp.c_proj.bias, layer.mlp.act, cols)
        return ShardedLayer(layer.ln_1, attn, layer.ln_2, mlp, prenorm=True)
    if family == "llama":
        a = layer.self_attn
        group = config.num_attention_heads // config.num_key_value_heads
        attn = ShardedAttention((a.q_proj.weight, a.q_proj.bias), (a.k_proj.weight, a.k_proj.bias),
                                (a.v_proj.weight, a.v_proj.bias), a.o_proj.weight, a.o_proj.bias, a.head_dim,
                                q_range, group, causal=True, rotary=block.rotary)
        m = layer.mlp
        mlp = ShardedMLP((m.up_proj.weight, m.up_proj.bias), m.down_proj.weight, m.down_proj.bias, m.act_fn, cols,
                         gate=(m.gate_proj.weight, m.gate_proj.bias))
        return ShardedLayer(layer.input_layernorm, attn, layer.post_attention_layernorm, mlp, prenorm=True)
    raise ValueError(f"family = {family!r} is not valid; accepted: bert, gpt2, llama")


def head_and_column_counts(bundle) -> tuple[int, int]:
    """Attention heads and MLP columns of the bundle's layers (GPT-2's n_inner defaults to 4 x hidden)."""
    cfg = bundle.hf_model.config
    columns = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * cfg.hidden_size
    return cfg.num_attention_heads, columns


def hidden_size(bundle) -> int:
    return bundle.hf_model.config.hidden_size
