"""One side of an end-to-end split-computing latency run: `python -m edgepool.split.latency_worker JOB.json`.

Started by `edgepool.split.latency.measure_latency` through the worker harness, one process per emulated
device: rank 0 is the weak device, rank 1 the edge server (`--role` overrides the rank's role). Both build
every option's pipeline side first (weights load at full speed), then switch on the device's CPU quota,
then time images: the device's clock covers its compute, the payload's trip over the shaped link, the
server's compute and the class's trip back, which is what a user of the device waits for.

The job (JSON): factory ("module:function"), kwargs, options (SplitOption dicts), images (a .npy path),
warmup, repeats, timeout_s. Results: `rank0.json` (device: per option the latencies, predictions, bytes) and
`rank1.json` (server: its compute seconds) in the job's folder.
"""
from __future__ import annotations

import argparse
import importlib
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.runtime.harness import read_job, write_result
from edgepool.split.options import SplitOption

DEVICE, SERVER = 0, 1  # ranks
ROLES = {"device": DEVICE, "server": SERVER}


def load_factory(path: str) -> Callable:
    """`module:function` -> the function (the pipeline factory)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"factory = {path!r}: give it as 'module:function'")
    return getattr(importlib.import_module(module), name)


def is_payload(out) -> bool:
    return isinstance(out, (bytes, bytearray, memoryview))


def _schedule(n_images: int, warmup: int, repeats: int) -> list[tuple[bool, int]]:
    """(timed?, image index) per step: warm-up images first, then the timed ones, cycling through the file."""
    return [(False, i % n_images) for i in range(warmup)] + [(True, i % n_images) for i in range(repeats)]


def run_device(options: list[SplitOption], sides: dict, images: np.ndarray, warmup: int, repeats: int) -> list[dict]:
    """Time every option on the device side; returns one record per option, in order."""
    import torch
    import torch.distributed as dist

    records = []
    for option in options:
        device_side = sides[option.name][0]
        local = option.location == "device"
        rec = {"option": option.to_dict(), "name": option.name, "image": [], "latencies_s": [], "device_s": [],
               "bytes": [], "predictions": []}
        steps = _schedule(len(images), warmup, repeats)
        dist.barrier()  # both sides start the option (its warm-up) together
        for k, (timed, index) in enumerate(steps):
            if k == warmup:
                dist.barrier()  # and its timed images
            image = images[index]
            t0 = time.perf_counter()
            out = device_side(image)
            t_compute = time.perf_counter()
            if local:
                if is_payload(out):
                    raise TypeError(f"{option.name}: a local option's device side must return the class, got bytes")
                sent, predicted = 0, int(out)
            else:
                if not is_payload(out):
                    raise TypeError(f"{option.name}: an offloading option's device side must return bytes, "
                                    f"got {type(out).__name__}")
                sent = len(out)
                dist.send(torch.tensor([sent], dtype=torch.int64), SERVER)
                if sent:
                    dist.send(torch.frombuffer(bytearray(out), dtype=torch.uint8), SERVER)
                answer = torch.zeros(1, dtype=torch.int64)
                dist.recv(answer, SERVER)
                predicted = int(answer.item())
            t1 = time.perf_counter()
            if timed:
                rec["image"].append(index)
                rec["latencies_s"].append(t1 - t0)
                rec["device_s"].append(t_compute - t0)
                rec["bytes"].append(sent)
                rec["predictions"].append(predicted)
        records.append(rec)
    return records


def run_server(options: list[SplitOption], sides: dict, warmup: int, repeats: int) -> list[dict]:
    """Answer the device's payloads, option by option; local options only join the barriers."""
    import torch
    import torch.distributed as dist

    records = []
    for option in options:
        rec = {"name": option.name, "server_s": []}
        dist.barrier()
        for k in range(warmup + repeats):
            if k == warmup:
                dist.barrier()
            if option.location == "device":
                continue
            length = torch.zeros(1, dtype=torch.int64)
            dist.recv(length, DEVICE)
            buf = torch.empty(int(length.item()), dtype=torch.uint8)
            if buf.numel():
                dist.recv(buf, DEVICE)
            t0 = time.perf_counter()
            predicted = int(sides[option.name][1](buf.numpy().tobytes()))
            if k >= warmup:
                rec["server_s"].append(time.perf_counter() - t0)
            dist.send(torch.tensor([predicted], dtype=torch.int64), DEVICE)
        records.append(rec)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_file", nargs="?", help="the job JSON (or --job)")
    parser.add_argument("--job", help="the job JSON")
    parser.add_argument("--role", choices=sorted(ROLES), help="default: rank 0 device, rank 1 server")
    args = parser.parse_args(argv)
    job_path = Path(args.job or args.job_file or parser.error("give the job file"))
    job = read_job(job_path)
    rank = ROLES[args.role] if args.role else int(os.environ.get("RANK", "0"))

    options = [SplitOption.from_dict(d) for d in job["options"]]
    factory = load_factory(job["factory"])
    kwargs = job.get("kwargs") or {}
    # build before the quota: loading weights on a 0.15-core device would take minutes and is not timed
    sides = {o.name: factory(o, **kwargs) for o in options if rank == DEVICE or o.location != "device"}
    images = np.load(job["images"]) if rank == DEVICE else None

    import torch
    import torch.distributed as dist

    from edgepool.testbed.worker import apply_cpu_quota

    quota_applied = apply_cpu_quota()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=timedelta(seconds=float(job.get("timeout_s", 1800))))
    try:
        if rank == DEVICE:
            records = run_device(options, sides, images, int(job["warmup"]), int(job["repeats"]))
        else:
            records = run_server(options, sides, int(job["warmup"]), int(job["repeats"]))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    write_result(job_path.parent, rank, {"role": "device" if rank == DEVICE else "server", "options": records,
                                         "quota_applied": quota_applied, "torch_threads": torch.get_num_threads(),
                                         "pid": os.getpid()})


if __name__ == "__main__":
    main()
