"""The baseline: every worker saves its stage to disk every K iterations; on a failure every worker is
restarted (new processes, re-planned on the survivors) from the last checkpoint all devices completed, and
the iterations since then are computed again. The `CheckpointRestart` strategy (strategy.py) drives it."""
from __future__ import annotations

from pathlib import Path

import torch

from edgepool.elastic.replica import capture


def save_stage_checkpoint(worker, root: str | Path, steps_done: int) -> Path:
    """`root/step<N>/<device>.pt`: the stage's blocks (weights + optimizer state), written atomically."""
    folder = Path(root) / f"step{steps_done}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{worker.device}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"blocks": capture(worker), "applied": steps_done}, tmp)
    tmp.replace(path)
    return path


def latest_checkpoint(root: str | Path, devices: list[str]) -> tuple[int, list[str]]:
    """(iterations done, files) of the newest checkpoint every one of `devices` wrote; (0, []) if none."""
    root = Path(root)
    best: tuple[int, list[str]] = (0, [])
    for folder in root.glob("step*") if root.exists() else []:
        n = int(folder.name[4:])
        files = sorted(str(p) for p in folder.glob("*.pt"))
        if set(devices) <= {Path(p).stem for p in files} and n > best[0]:
            best = (n, files)
    return best
