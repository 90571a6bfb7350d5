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
`speed_worker` is the device side, started on every device of the testbed through the worker harness.
"""
from __future__ import annotations

import time
from pathlib import Path

from edgepool.local_device import torch_threads
from edgepool.runtime.harness import WorkerJob, run_workers

WORKER = "edgepool.runtime.probes.speed_worker"


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
    """Per device: (a free core's time per pass x cores) / (the device's time per pass); 1 = its quota's worth.

    `testbed` is a started `edgepool.testbed.Testbed`; its deferred quotas are off again afterwards."""
    cores = {n: testbed.limits[n].cpu_cores for n in testbed.devices}
    quotas_before = {n: testbed.cgroups[n].quota_file.read_text() for n in cores}
    job = WorkerJob.create({"model": model.to_dict(), "batch": batch, "seq": seq, "seconds": target_s},
                           prefix="edgepool-speed-probe-")
    free_core = _FreeCoreWhenReady(job.folder, len(cores), model, batch, seq)
    try:
        sides = run_workers(testbed, WORKER, job, list(cores), timeout_s, on_tick=free_core, tick_s=0.02)
    finally:
        for device, quota in quotas_before.items():  # a deferred quota is off until a worker's set-up is done
            testbed.cgroups[device].quota_file.write_text(quota.strip())
    job.discard()
    measured = {device: side["seconds_per_pass"] for device, side in zip(cores, sides)}
    return {d: min(1.0, free_core.seconds / (measured[d] * cores[d])) for d in cores}


class _FreeCoreWhenReady:
    """Once every device has built its model (its `ready-*` file), measures a free core here while they
    wait, then says go (`go`, also when measuring failed, so that no device waits for its timeout)."""

    def __init__(self, sync: Path, devices: int, model, batch: int, seq: int | None):
        self.sync, self.devices, self.model, self.batch, self.seq = sync, devices, model, batch, seq
        self.seconds: float | None = None

    def __call__(self) -> None:
        if self.seconds is not None or len(list(self.sync.glob("ready-*"))) < self.devices:
            return
        from edgepool.runtime.data import build_bundle
        from edgepool.runtime.emulation import ahead_of_other_jobs

        try:
            with torch_threads(1):
                bundle = build_bundle(self.model)
                with ahead_of_other_jobs():
                    seconds_per_pass(bundle, self.batch, self.seq, 2)  # warm-up
                    self.seconds = min(seconds_per_pass(bundle, self.batch, self.seq, 3) for _ in range(3))
        finally:
            (self.sync / "go").touch()
