"""Plain single-process training on the same model and data: what a distributed run must reproduce."""
from __future__ import annotations

import torch

from edgepool.runtime.data import ModelSpec, build_bundle, make_optimizer, step_batch


def reference_train(model: ModelSpec, batch: int, steps: int, seq: int | None = None, data_seed: int = 0,
                    optimizer: str = "sgd", lr: float = 0.01) -> dict[str, torch.Tensor]:
    """State dict of `bundle.blocks` (keys "block.param") after `steps` full-batch steps with mean loss."""
    bundle = build_bundle(model)
    blocks = bundle.blocks
    opt = make_optimizer(blocks.parameters(), optimizer, lr)
    for step in range(steps):
        inputs, targets = step_batch(bundle, batch, seq, data_seed, step)
        opt.zero_grad(set_to_none=True)
        bundle.loss(blocks(inputs), targets).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in blocks.state_dict().items()}
