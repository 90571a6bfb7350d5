"""The device side of the speed probe: `python -m edgepool.runtime.probes.speed_worker JOB.json`, one process per
testbed device, started by `probes.speed` through the worker harness. It sets up, says ready, waits for the
go, switches its CPU quota on and trains for the job's `seconds`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from edgepool.runtime.data import ModelSpec, build_bundle
from edgepool.runtime.harness import read_job, write_result
from edgepool.runtime.probes.speed import seconds_per_pass
from edgepool.testbed.worker import apply_cpu_quota


def main(job_path: str) -> None:
    job = read_job(job_path)
    sync = Path(job_path).parent
    torch.set_num_threads(1)
    bundle = build_bundle(ModelSpec.from_dict(job["model"]))
    seconds_per_pass(bundle, job["batch"], job["seq"], 2)
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.005)
    apply_cpu_quota()
    seconds = seconds_per_pass(bundle, job["batch"], job["seq"], 3, min_seconds=job["seconds"])
    write_result(sync, int(os.environ["RANK"]), {"device": os.environ.get("EDGEPOOL_DEVICE"),
                                                 "seconds_per_pass": seconds})


if __name__ == "__main__":
    main(sys.argv[1])
