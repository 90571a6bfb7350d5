"""Parallel adapters: a small side network fed by the frozen backbone's hidden states, plus a task head.

The side stream starts at the embedding state; at each depth i an adapter (down-projection, GELU,
up-projection) transforms the side stream and the result is added to the backbone's state i:

    x_0 = h_0,    x_i = h_i + up_i(gelu(down_i(x_{i-1})))    for i = 1..L

The pooled x_L (mean over real tokens) feeds the same linear head the other methods use. Because the adapters only *read* h_i, the
backward pass stops at them and never enters the backbone, and h_i can be cached. Up-projections start at
zero, so training starts from the pretrained representation.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: [batch, seq, d] -> [batch, d]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class ClassifierHead(nn.Module):
    """Mean pooling and a linear layer: the same head for every method, so they differ only in what trains."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.linear(masked_mean(hidden, attention_mask))


class ParallelAdapters(nn.Module):
    def __init__(self, hidden_size: int, num_states: int, num_labels: int, bottleneck: int = 64):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(hidden_size, bottleneck) for _ in range(num_states - 1))
        self.up = nn.ModuleList(nn.Linear(bottleneck, hidden_size) for _ in range(num_states - 1))
        for up in self.up:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.act = nn.GELU()
        self.head = ClassifierHead(hidden_size, num_labels)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """states: [num_states, tokens, hidden], the real tokens of a batch packed sample after sample (no
        padding: adapters act per token, so padded positions would only cost time); lengths: tokens per
        sample. Returns logits [batch, labels]."""
        x = states[0]
        for i, (down, up) in enumerate(zip(self.down, self.up), start=1):
            x = states[i] + up(self.act(down(x)))
        segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        pooled = x.new_zeros(len(lengths), x.shape[-1]).index_add_(0, segment, x)
        pooled = pooled / lengths.clamp_min(1).unsqueeze(-1).to(x.dtype)
        return self.head.linear(pooled)

