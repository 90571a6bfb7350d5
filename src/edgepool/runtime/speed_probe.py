"""How fast each emulated device really computes under its CPU quota, measured inside its cgroup.

A quota of c cores does not make a worker exactly c times as fast as a free core: a quarter-core device
runs in 2.5 ms slices and finds its caches cold after every 7.5 ms pause, and every device's core is
shared with the others' (measured on the 2-core build VM with four devices at 1, 0.5, 0.25 and 0.25
core: each got 0.5-0.97 of its quota's worth, varying run to run). So, as one would profile real devices
before planning, every device trains the model for a moment in its own cgroup, all at once as in a run,
and its speed is the free core's times the measured fraction. `python -m edgepool.runtime.speed_probe JSON` is the device side.
"""
from __future__ import annotations

import json
import sys
import threading
import time

import torch


def seconds_per_pass(bundle, batch: int, seq: int | None, passes: int) -> float:
    """Wall seconds of one forward + backward of the whole model, averaged over `passes`."""
    x = bundle.example_input(batch, seq)
    start = time.perf_counter()
    for _ in range(passes):
        bundle.blocks(x).float().sum().backward()
    return (time.perf_counter() - start) / passes


def measure_quota_efficiency(testbed, model, batch: int, seq: int | None, target_s: float = 0.25
                             ) -> dict[str, float]:
    """Per device: (a free core's time per pass x cores) / (the device's time per pass); 1 = its quota's worth."""
    from edgepool.runtime.data import build_bundle
    from edgepool.runtime.emulation import ahead_of_other_jobs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = build_bundle(model)
        with ahead_of_other_jobs():
            seconds_per_pass(bundle, batch, seq, 2)  # warm-up
            free = min(seconds_per_pass(bundle, batch, seq, 3) for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    passes = max(3, round(target_s / free))
    job = json.dumps({"model": model.to_dict(), "batch": batch, "seq": seq, "passes": passes})
    cores = {n: testbed.limits[n].cpu_cores for n in testbed.devices}
    quotas_before = {n: testbed.cgroups[n].quota_file.read_text() for n in cores}
    measured: dict[str, float] = {}
    errors: list[str] = []

    def probe(device: str) -> None:
        done = testbed.run_in(device, [sys.executable, "-m", "edgepool.runtime.speed_probe", job],
                              capture_output=True, text=True)
        if done.returncode != 0:
            errors.append(f"{device}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        else:
            measured[device] = float(done.stdout.strip().splitlines()[-1])

    threads_ = [threading.Thread(target=probe, args=(d,)) for d in cores]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    for device, quota in quotas_before.items():  # a deferred quota is off again until a worker's set-up is done
        testbed.cgroups[device].quota_file.write_text(quota.strip())
    if errors:
        raise RuntimeError("speed probe failed on " + "; ".join(errors))
    return {d: min(1.0, free / (measured[d] * cores[d])) for d in cores}


def _device_side(job: dict) -> float:
    from edgepool.runtime.data import ModelSpec, build_bundle
    from edgepool.testbed.worker import apply_cpu_quota

    torch.set_num_threads(1)
    bundle = build_bundle(ModelSpec.from_dict(job["model"]))
    seconds_per_pass(bundle, job["batch"], job["seq"], 2)
    apply_cpu_quota()
    return seconds_per_pass(bundle, job["batch"], job["seq"], job["passes"])


if __name__ == "__main__":
    print(_device_side(json.loads(sys.argv[1])), flush=True)
