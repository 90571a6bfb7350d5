"""The characterization: one factor at a time around PyTorch's defaults, plus a few combined settings, each
measured for real in its own child process; the result names the default, the best, and what to set.

"Best" is the setting with the highest samples per second (the lowest time per sample): rows differ in batch
size, so their mean iteration times are not comparable, while samples per second is what training time
follows.
"""
from __future__ import annotations

import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgepool.characterize.container import container_engine, namespaces_unavailable
from edgepool.characterize.dataset import SOURCE, SIDE, remove_tmpfs_copy, write_images
from edgepool.characterize.measurement import Measurement
from edgepool.characterize.recommend import recommend
from edgepool.characterize.runner import COMPUTE_THREADS, pool, run_once
from edgepool.characterize.setting import DEFAULT, NAMESPACES_LABEL, Setting
from edgepool.errors import SpecError

Progress = Callable[[str, int, "int | None"], None]
AXES = ("workers", "prefetch", "pin_memory", "batch", "storage", "cache", "power", "runtime", "combined")


@dataclass
class SweepPlan:
    """Which settings to measure and how long: `iterations` measured steps after `warmup` steps each, in
    `rounds` rounds; each round visits the settings in a new random order, so drift in a shared machine's load
    spreads over all of them instead of landing on a few."""

    name: str
    iterations: int
    warmup: int
    runs: list[tuple[str, Setting]]  # (axis, setting); the first is the default
    rounds: int = 1

    def only(self, axes: list[str]) -> "SweepPlan":
        """The plan restricted to some axes (the default row always stays)."""
        for axis in axes:
            if axis not in AXES:
                raise SpecError(field="axis", value=axis, accepted=", ".join(AXES))
        runs = [r for r in self.runs if r[0] == "default" or r[0] in axes]
        return SweepPlan(self.name, self.iterations, self.warmup, runs, self.rounds)


def build_plan(name: str = "quick", cores: int | None = None) -> SweepPlan:
    """'quick' (15 settings, 3 rounds of 30 steps: about 4 minutes on 2 cores) or 'full' (more values per
    knob and combinations, 4 rounds of 150 steps)."""
    if name not in ("quick", "full"):
        raise SpecError(field="plan", value=name, accepted="quick, full")
    n = cores or os.cpu_count() or 1
    quick = name == "quick"
    workers = sorted({1, n}) if quick else list(range(1, n + 1)) + [2 * n]
    wide = Setting(workers=n)
    runs: list[tuple[str, Setting]] = [("default", DEFAULT)]
    runs += [("workers", Setting(workers=w)) for w in workers]
    runs += [("prefetch", wide.with_(prefetch_factor=p)) for p in ((4,) if quick else (1, 4, 8))]
    runs += [("pin_memory", Setting(pin_memory=True))]
    runs += [("batch", Setting(batch_size=b)) for b in ((16, 64) if quick else (8, 16, 64, 128))]
    runs += [("storage", Setting(storage="tmpfs")), ("cache", Setting(cache="dropped")),
             ("power", Setting(power_mode="half")), ("runtime", Setting(runtime="namespaces")),
             ("runtime", Setting(runtime="container"))]
    runs += [("combined", wide.with_(batch_size=64)), ("combined", wide.with_(power_mode="half")),
             ("combined", wide.with_(cache="dropped"))]
    if not quick:
        runs += [("combined", wide.with_(storage="tmpfs", pin_memory=True)),
                 ("combined", wide.with_(storage="tmpfs", cache="dropped")),
                 ("combined", wide.with_(prefetch_factor=4, batch_size=64, storage="tmpfs")),
                 ("combined", wide.with_(runtime="namespaces"))]
    return SweepPlan(name, iterations=30 if quick else 150, warmup=5 if quick else 10, runs=runs,
                     rounds=3 if quick else 4)


@dataclass
class Characterization:
    """The measured sweep: every row, the default and best rows, skipped axes with reasons, what to set."""

    plan: str
    default: Measurement
    best: Measurement
    rows: list[Measurement]
    skipped: dict[str, str]
    recommendation: list[str]
    machine: str
    wall_s: float
    notes: list[str] = field(default_factory=list)
    best_by: str = "samples_per_s"

    def to_dict(self) -> dict:
        return asdict(self)


def characterize(plan: SweepPlan | str = "quick", workdir: str | Path = "runs/characterize",
                 progress: Progress | None = None) -> Characterization:
    """Write the images under `workdir` (once), measure every runnable setting of `plan`, and summarize."""
    started = time.perf_counter()
    plan = build_plan(plan) if isinstance(plan, str) else plan
    disk_folder = write_images(Path(workdir) / "mnist-png", progress=progress)
    skipped, engine = unavailable_axes()
    runs = [(axis, s) for axis, s in plan.runs if _axis_of(s) not in skipped]
    raws: list[list[dict]] = [[] for _ in runs]
    visits = [i for r in range(plan.rounds) for i in random.Random(r).sample(range(len(runs)), len(runs))]
    try:
        for done, i in enumerate(visits):
            if progress:
                progress("measuring settings", done, len(visits))
            raws[i].append(run_once(runs[i][1], disk_folder, plan.iterations, plan.warmup, engine))
        if progress:
            progress("measuring settings", len(visits), len(visits))
    finally:
        remove_tmpfs_copy(disk_folder)
    rows = [pool(setting, axis, raw) for (axis, setting), raw in zip(runs, raws)]
    default = rows[0]
    best = max(rows, key=lambda m: m.samples_per_s)
    return Characterization(
        plan=plan.name, default=default, best=best, rows=rows, skipped=skipped,
        recommendation=recommend(default, rows), machine=machine(), wall_s=time.perf_counter() - started,
        notes=[f"data: {SOURCE}, written as PNG files, decoded and augmented on the CPU (random resized crop, "
               f"rotation, {SIDE}x{SIDE}); compute: a small CNN's SGD step on {COMPUTE_THREADS} torch thread",
               f"{plan.iterations} measured iterations after {plan.warmup} warm-up ones per setting and round, "
               f"{plan.rounds} round(s) in shuffled order, pooled",
               "power modes are emulated as cgroup v1 CPU quotas (a share of this host's cores), not set in "
               "hardware",
               f"best = highest samples/s; runtime 'namespaces' = {NAMESPACES_LABEL}"])


def _axis_of(setting: Setting) -> str | None:
    """The skippable axis a setting needs (power mode, runtime), or None."""
    if setting.power_mode != "full":
        return "power"
    if setting.runtime == "namespaces":
        return "namespaces"
    if setting.runtime == "container":
        return "container"
    return None


def unavailable_axes() -> tuple[dict[str, str], str | None]:
    """Axes this host cannot run, each with the reason (checked quickly, nothing installed or pulled), and
    the container engine when there is one."""
    from edgepool.testbed.system import CGROUP_ROOT, CONTROLLERS

    skipped = {}
    if os.geteuid() != 0:
        skipped["power"] = f"emulated power modes need root to write cgroup v1 CPU quotas (uid {os.geteuid()})"
    else:
        missing = [c for c in CONTROLLERS if not (CGROUP_ROOT / c / "cgroup.procs").exists()]
        if missing:
            skipped["power"] = f"cgroup v1 controller(s) {', '.join(missing)} not mounted under {CGROUP_ROOT}"
    reason = namespaces_unavailable()
    if reason:
        skipped["namespaces"] = reason
    engine, reason = container_engine()
    if reason:
        skipped["container"] = reason
    return skipped, engine


def machine() -> str:
    import torch

    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__})"
