"""How fast each emulated device really computes under its CPU quota, measured inside its cgroup.

A quota of c cores does not make a worker exactly c times as fast as a free core. Measured here, in one
cgroup with nothing else running: a pass that takes 25.6 ms of CPU free took 39-44 ms of CPU under a half
or a quarter core at a 10 ms period (the quota itself is delivered exactly), small passes losing more (two
blocks at 2 samples: 1.64x the CPU, the whole model at 4 samples: 1.44x); and two passes at once on this
VM's two vCPUs each take 1.3-1.5x longer than one alone. So, as one would profile real devices before
planning, every device trains the whole model at a quarter of the batch for half a second in its own
cgroup, all at once as in a run, and its speed is the free core's times the measured fraction (probing
each plan's devices with their own stages at their micro-batch rows instead was tried and did not bring
the pipeline's simulated speed closer to the measured one). The devices start measuring together, once
every one has built its model: a device that measured while the others still imported torch at full speed
(their quotas come on after set-up) once got 0.36 of a core.
`python -m edgepool.runtime.speed_probe JSON` is the device side.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def seconds_per_pass(bundle, batch: int, seq: int | None, passes: int, min_seconds: float = 0.0) -> float:
    """Wall seconds of one forward + backward of the whole model, averaged over at least `passes` passes and
    at least `min_seconds`."""
    x = bundle.example_input(batch, seq)
    done, start = 0, time.perf_counter()
    while done < passes or time.perf_counter() - start < min_seconds:
        bundle.blocks(x).float().sum().backward()
        done += 1
    return (time.perf_counter() - start) / done


def measure_quota_efficiency(testbed, model, batch: int, seq: int | None, target_s: float = 0.5,
                             timeout_s: float = 300.0) -> dict[str, float]:
    """Per device: (a free core's time per pass x cores) / (the device's time per pass); 1 = its quota's worth."""
    from edgepool.runtime.data import build_bundle
    from edgepool.runtime.emulation import ahead_of_other_jobs

    cores = {n: testbed.limits[n].cpu_cores for n in testbed.devices}
    quotas_before = {n: testbed.cgroups[n].quota_file.read_text() for n in cores}
    measured: dict[str, float] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgepool-speed-probe-") as sync_dir:
        job = json.dumps({"model": model.to_dict(), "batch": batch, "seq": seq, "seconds": target_s,
                          "sync_dir": sync_dir})

        def probe(device: str) -> None:
            try:
                done = testbed.run_in(device, [sys.executable, "-m", "edgepool.runtime.speed_probe", job],
                                      capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                errors.append(f"{device}: no result within {timeout_s:.0f} s")
                return
            if done.returncode != 0:
                errors.append(f"{device}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
            else:
                measured[device] = float(done.stdout.strip().splitlines()[-1])

        threads_ = [threading.Thread(target=probe, args=(d,)) for d in cores]
        for t in threads_:
            t.start()
        deadline = time.monotonic() + timeout_s
        ready = Path(sync_dir)
        while len(list(ready.glob("ready-*"))) < len(cores) and not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        # the free core, measured while the devices wait (idle) for the go
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            bundle = build_bundle(model)
            with ahead_of_other_jobs():
                seconds_per_pass(bundle, batch, seq, 2)  # warm-up
                free = min(seconds_per_pass(bundle, batch, seq, 3) for _ in range(3))
        finally:
            torch.set_num_threads(threads)
            (ready / "go").touch()  # also on failure, so that no device waits for its timeout
        for t in threads_:
            t.join()
    for device, quota in quotas_before.items():  # a deferred quota is off again until a worker's set-up is done
        testbed.cgroups[device].quota_file.write_text(quota.strip())
    if errors:
        raise RuntimeError("speed probe failed on " + "; ".join(errors))
    return {d: min(1.0, free / (measured[d] * cores[d])) for d in cores}


def _device_side(job: dict) -> float:
    """Seconds per pass on this device: set up, say ready, wait for the go, then train for `seconds`."""
    from edgepool.runtime.data import ModelSpec, build_bundle
    from edgepool.testbed.worker import apply_cpu_quota

    torch.set_num_threads(1)
    bundle = build_bundle(ModelSpec.from_dict(job["model"]))
    seconds_per_pass(bundle, job["batch"], job["seq"], 2)
    sync = Path(job["sync_dir"])
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.005)
    apply_cpu_quota()
    return seconds_per_pass(bundle, job["batch"], job["seq"], 3, min_seconds=job["seconds"])


if __name__ == "__main__":
    print(_device_side(json.loads(sys.argv[1])), flush=True)
