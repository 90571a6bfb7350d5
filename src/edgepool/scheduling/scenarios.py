"""The four scheduling scenarios by name, each a module with `SCENARIO`, `train(out, ...)` and `evaluate(out, ...)`.

The CLI and the benchmark look scenarios up here, so a fifth one is one entry in `SCENARIOS` and one module.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

from edgepool.errors import SpecError

# progress(stage, done, total): what a scenario's train and evaluate report to a progress bar
Progress = Callable[[str, int, "int | None"], None]

# name -> (module, what it schedules)
SCENARIOS: dict[str, tuple[str, str]] = {
    "srole": ("edgepool.scheduling.srole.scenario", "training jobs over edge nodes, shielded multi-agent RL (SROLE)"),
    "hode": ("edgepool.scheduling.hode.scenario", "camera-frame regions offloaded to unlike nodes, DRL balancer (Hode)"),
    "recslam": ("edgepool.scheduling.recslam.scenario", "robots' laser scans assigned to edge servers (RecSLAM)"),
    "moe2": ("edgepool.scheduling.moe2.scenario", "LLM experts on edge servers chosen under budgets (MoE²)"),
}


def scenario_module(name: str) -> ModuleType:
    """The scenario's module; an unknown name is bad input naming the accepted ones."""
    if name not in SCENARIOS:
        raise SpecError("--scenario", name, ", ".join(SCENARIOS))
    return importlib.import_module(SCENARIOS[name][0])


def tick(progress: Progress | None, stage: str, done: int, total: int | None) -> None:
    """Report to the progress callback when there is one."""
    if progress:
        progress(stage, done, total)
