"""A worker for the pool tests: `python -m pool_toy JOB.json` writes a progress file, then its result into
`job["out_dir"]` (a path the agent rewrites into its own folder), sleeping `job["sleep_s"]` in between, or fails
when its device is in `job["fail"]`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edgepool.runtime.harness import read_job, write_result

if __name__ == "__main__":
    job = read_job(sys.argv[1])
    rank, device = int(os.environ["RANK"]), os.environ["EDGEPOOL_DEVICE"]
    out = Path(job["out_dir"])
    (out / f"progress-{device}").write_text("started")
    print(f"{device} started as rank {rank}", flush=True)
    if device in job.get("fail", []):
        raise RuntimeError(f"injected failure on {device}")
    time.sleep(job.get("sleep_s", 0.0))
    write_result(out, rank, {"rank": rank, "device": device, "job_file": sys.argv[1],
                             "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"})
