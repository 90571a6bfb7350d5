"""Factories for one's own models: each returns a ModelBundle, built the same way in every worker process.

A worker imports the factory by its "module:function" name (`ModelSpec(factory="mymodels:mlp_bundle")`), so
this file must be importable there: on PYTHONPATH (`own_model.py` passes it to the workers) or installed.
Every rank builds the model with the same seed, so the initial weights agree without a broadcast.
"""
from __future__ import annotations

import torch
from torch import nn

from edgepool.models.zoo import bundle_from_module


def mlp_bundle(width: int = 32, hidden: int = 64, outputs: int = 10):
    """An nn.Sequential: the blocks are its children, so a pipeline may cut after any of the five layers
    (a stage may hold only a ReLU: it simply runs)."""
    model = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, outputs))
    return bundle_from_module(model, torch.zeros(1, width), name="my-mlp")


class Residual(nn.Module):
    """A block whose forward is not a chain (x + f(x)): it stays whole inside one block."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                  nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_bundle(width: int = 32, depth: int = 4, outputs: int = 10):
    """A model that is not an nn.Sequential, given as its list of blocks (stem, residual blocks, head)."""
    blocks = [nn.Linear(width, width), *(Residual(width) for _ in range(depth)), nn.Linear(width, outputs)]
    return bundle_from_module(blocks, torch.zeros(1, width), name="my-resnet")
