"""One edge node of Hode's real stage: `python -m edgepool.scheduling.hode.worker JOB.json`.

Started by `stage.run_real_stage` through the worker harness, one process per node (rank = node). It
loads the recognizer and the frames, waits until every node is ready, then for each run and frame, at the
frame's start time: holds the region for its emulated link time and then for the other work queued ahead of it
(both sleeps, given by the job: no tc here), runs the CNN for real over the region's blocks ((n, 1, b, b)
batch), then sleeps so the node's CPU share is `share` of this core (a duty cycle: a region that took c seconds
of compute holds the node c / share seconds); that is the region's finish. It then recognizes the region's
digits (thresholds, components, crops classified), timed apart: work the cost model does not count.
Results: `rank<R>.json` per run and frame.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgepool.runtime.harness import read_job, write_result
from edgepool.scheduling.hode.cnn import DigitCNN, classify, detect
from edgepool.scheduling.hode.regions import pixel_mask


def region_blocks(frame: np.ndarray, blocks: np.ndarray, b: int) -> torch.Tensor:
    """(H, W) uint8 and (gh, gw) bool -> (n, 1, b, b) float32 blocks of the region."""
    rows, cols = np.nonzero(blocks)
    tiles = np.stack([frame[r * b:(r + 1) * b, c * b:(c + 1) * b] for r, c in zip(rows, cols)]) if len(rows) \
        else np.zeros((0, b, b), np.uint8)
    return torch.from_numpy(tiles.astype(np.float32) / 255.0)[:, None]


@torch.no_grad()
def backbone(model: DigitCNN, frame: np.ndarray, blocks: np.ndarray, b: int) -> None:
    """The work the cost model counts: the CNN over the region's blocks."""
    model(region_blocks(frame, blocks, b))


@torch.no_grad()
def recognize(model: DigitCNN, frame: np.ndarray, blocks: np.ndarray, b: int) -> int:
    """Post-processing the cost model leaves out: find the region's objects and classify them; #objects."""
    dets = detect(frame, pixel_mask(blocks, b))
    classify(model, np.array([d.crop for d in dets]).reshape(-1, 28, 28))
    return len(dets)


def main(job_path: str) -> None:
    torch.set_num_threads(1)
    path = Path(job_path)
    job = read_job(path)
    rank, nodes = int(os.environ["RANK"]), len(job["shares"])
    data = np.load(job["data"])
    frames, blocks = data["frames"], data["blocks"]  # (F, H, W) uint8, (R, F, k, gh, gw) bool
    model = DigitCNN()
    model.load_state_dict(torch.load(job["weights"]))
    model.eval()
    b, share = job["block"], job["shares"][rank]
    backbone(model, frames[0], np.ones_like(blocks[0, 0, rank]), b)  # warm-up, untimed
    (path.parent / f"ready{rank}").write_text(str(time.time()))
    while sum((path.parent / f"ready{r}").exists() for r in range(nodes)) < nodes:
        time.sleep(0.01)
    time.sleep(0.05)
    t0 = max(float((path.parent / f"ready{r}").read_text()) for r in range(nodes)) + 0.5
    out = []
    for ri in range(blocks.shape[0]):
        rows = []
        for fi in range(blocks.shape[1]):
            start = t0 + job["starts"][ri][fi]
            time.sleep(max(0.0, start - time.time()))
            mine = blocks[ri, fi, rank]
            n = int(mine.sum())
            if n == 0:
                rows.append({"finish_s": 0.0, "compute_s": 0.0, "blocks": 0, "objects": 0, "recognize_s": 0.0})
                continue
            time.sleep(job["link_s"][ri][fi][rank])    # the emulated link at this frame's bandwidth
            time.sleep(job["queue_s"][ri][fi][rank])   # the other work ahead of the region in the node's queue
            c0 = time.perf_counter()
            backbone(model, frames[fi], mine, b)
            compute = time.perf_counter() - c0
            time.sleep(compute * (1.0 / share - 1.0))  # the emulated CPU share
            finish = time.time() - start
            c0 = time.perf_counter()
            objects = recognize(model, frames[fi], mine, b)
            rows.append({"finish_s": finish, "compute_s": compute, "blocks": n, "objects": objects,
                         "recognize_s": time.perf_counter() - c0})
        out.append(rows)
    write_result(path.parent, rank, {"rank": rank, "device": os.environ.get("EDGEPOOL_DEVICE", ""), "runs": out})


if __name__ == "__main__":
    main(sys.argv[1])
