"""One measured run of a setting: a DataLoader over the PNG digits feeding a small CNN's training steps.

Run as `python -m edgepool.characterize.pipeline REQUEST.json` in a child process (so a CPU quota, a dropped
page cache or namespaces apply to it alone); the child joins the cgroups named in the request before it
imports torch, and writes its raw timings to the request's result path. `run_pipeline` is the same run in
this process, for tests.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SEED = 0


def small_cnn():
    """A small real CNN for 96x96 grey digits (about 10 MFLOP per sample for forward + backward): light enough
    that the input pipeline matters, as on an edge GPU whose compute is fast next to its CPU."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),      # 48 x 48
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),     # 24 x 24
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),    # 12 x 12
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def run_pipeline(request: dict) -> dict:
    """The measured run described by `request` (keys: setting, data_dir, iterations, warmup, compute_threads);
    returns the measured (post warm-up) iterations' stalls and computes, the CPU seconds of this run's
    processes and of everything else on the host over them, their wall seconds, and notes on how the setting
    was realized."""
    import psutil
    import torch
    from torch.utils.data import DataLoader

    from edgepool.characterize.cache import drop_page_cache, warm_page_cache
    from edgepool.characterize.dataset import DigitFiles
    from edgepool.local_device import torch_threads

    setting, notes = request["setting"], list(request.get("notes", []))
    torch.manual_seed(SEED)
    dataset = DigitFiles(request["data_dir"])
    files = [dataset.folder / name for name, _ in dataset.files]
    notes.append(drop_page_cache(files) if setting["cache"] == "dropped" else warm_page_cache(files))
    if setting["pin_memory"] and not torch.accelerator.is_available():
        notes.append("pin_memory requested, but torch found no accelerator, so the DataLoader does not pin")
    extra = {} if setting["workers"] == 0 else {"prefetch_factor": setting["prefetch_factor"] or 2,
                                                "persistent_workers": True}
    loader = DataLoader(dataset, batch_size=setting["batch_size"], shuffle=True, drop_last=True,
                        num_workers=setting["workers"], pin_memory=setting["pin_memory"],
                        generator=torch.Generator().manual_seed(SEED), **extra)
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    total = request["warmup"] + request["iterations"]
    stalls, computes = [], []
    me = psutil.Process()
    with torch_threads(request["compute_threads"]):
        iterator = iter(loader)
        for i in range(total):
            if i == request["warmup"]:
                cpu_start, host_start, wall_start = _tree_cpu_seconds(me), _host_busy_seconds(), time.perf_counter()
            t0 = time.perf_counter()
            try:
                images, labels = next(iterator)
            except StopIteration:  # more iterations than one epoch: the next epoch's start is a stall too
                iterator = iter(loader)
                images, labels = next(iterator)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            optimizer.step()
            t2 = time.perf_counter()
            stalls.append(t1 - t0)
            computes.append(t2 - t1)
        cpu_seconds, wall_s = _tree_cpu_seconds(me) - cpu_start, time.perf_counter() - wall_start
        host_seconds = _host_busy_seconds() - host_start
        del iterator
    return {"stalls": stalls[request["warmup"]:], "computes": computes[request["warmup"]:],
            "cpu_seconds": cpu_seconds, "other_cpu_seconds": max(0.0, host_seconds - cpu_seconds),
            "wall_s": wall_s, "notes": notes}


def _tree_cpu_seconds(process) -> float:
    """User + system CPU seconds of this process and its live children (the loader workers)."""
    import psutil

    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _host_busy_seconds() -> float:
    """Busy CPU seconds of the whole host (every process): the rest of it is what neighbours used."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    for procs in request.get("cgroup_procs", []):  # join the power mode's cgroup before any thread starts
        Path(procs).write_text("0")  # 0: this process (a pid would be namespace-relative under unshare)
    result = run_pipeline(request)
    from edgepool.atomic import write_text_atomic

    write_text_atomic(request["result_path"], json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
