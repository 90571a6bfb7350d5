"""Execute training plans for real over torch.distributed (gloo): one process per device.

Names load on first use so that `python -m edgepool.runtime.worker` imports only what a worker needs.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelSpec": "edgepool.runtime.data",
    "torchrun_commands": "edgepool.runtime.launch",
    "reference_train": "edgepool.runtime.reference",
    "RunOptions": "edgepool.runtime.runner",
    "RunOutcome": "edgepool.runtime.runner",
    "execute": "edgepool.runtime.runner",
    "run_plan": "edgepool.runtime.runner",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgepool.runtime' has no attribute {name!r}")
