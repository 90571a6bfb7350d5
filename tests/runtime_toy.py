"""A small model for runtime tests: an MLP whose last block reuses the first block's weight (tied weights)."""
from __future__ import annotations

import torch
from torch import nn

from edgepool.models.zoo import bundle_from_module


class TiedHead(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.linear.weight.t())


def tied_mlp(width: int = 16, depth: int = 6):
    first = nn.Linear(width, width)
    blocks = [nn.Sequential(first, nn.Tanh())]
    blocks += [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth - 2)]
    blocks.append(TiedHead(first))
    bundle = bundle_from_module(nn.Sequential(*blocks), torch.zeros(1, width), name="tied-mlp")
    bundle.config["output_shape"] = [width]
    return bundle


class CrashOnRankZero:
    """An iteration hook that makes rank 0 fail at step 1 (the others then block on it)."""

    def before_iteration(self, worker, step: int) -> None:
        if worker.rank == 0 and step == 1:
            raise RuntimeError("injected failure")

    def after_iteration(self, worker, step: int) -> None:
        pass
