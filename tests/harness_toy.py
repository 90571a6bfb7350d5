"""A worker for the harness test: `python -m harness_toy JOB.json` writes its rank and device, or fails if its
device is in the job's `fail` list. Ranks wait a little in reverse order, so the last rank finishes first."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edgepool.runtime.harness import read_job, write_result

if __name__ == "__main__":
    job = read_job(sys.argv[1])
    rank, device = int(os.environ["RANK"]), os.environ["EDGEPOOL_DEVICE"]
    if device in job.get("fail", []):
        raise RuntimeError(f"injected failure on {device}")
    time.sleep(0.1 * (int(os.environ["WORLD_SIZE"]) - 1 - rank))
    write_result(Path(sys.argv[1]).parent, rank, {"rank": rank, "device": device, "greeting": job["greeting"]})
