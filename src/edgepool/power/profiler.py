"""Run workloads across power modes and record real time per minibatch (and power where a sensor exists).

On a Jetson the modes would be set with nvpmodel/jetson_clocks; here a mode is *emulated* (see
`modes.local_mode_space`): CPU affinity for cores, `torch.set_num_threads` for threads, and a cgroup v1 CFS
quota for the CPU speed fraction (needs root; without it only cpu_fraction = 1.0 modes run, with a message).
Each workload runs in its own worker process inside the profiler's cgroup; the parent changes the quota
between modes and visits modes in random order so that drift in a shared machine's load spreads evenly.
Power comes from RAPL, NVML or jetson-stats when detected, otherwise from the power model, labelled so.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.meters import Meter, MeterSession, detect_meter
from edgepool.power.modes import Mode, ModeSpace
from edgepool.power.power_model import power_model_for
from edgepool.power.workloads import Workload, build_step

CFS_PERIOD_US = 10_000  # a short period makes the quota a fine-grained duty cycle
MIN_QUOTA_US = 1_000
# On a shared host the quota only binds if the group gets its share first: weight it above other jobs
# (the quota still caps it at the mode's CPU fraction, so the others keep the rest).
CPU_SHARES = 8192
# Idle OpenMP threads sleep instead of spinning: a spinning thread burns the quota the mode allows.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


# ----------------------------------------------------------------------------------------------- sensors
class PowerSensor:
    """Watts averaged since the previous `read()`, from the host's energy meter (`edgepool.meters`)."""

    def __init__(self, meter: Meter, clock: Callable[[], float] = time.monotonic):
        self.meter, self.clock = meter, clock
        self.name = f"{meter.name} ({meter.covers})"
        self._session = MeterSession(meter, clock=clock).start()

    def read(self) -> float:
        measurement = self._session.stop()
        self._session = MeterSession(self.meter, clock=self.clock).start()
        return measurement.mean_power_w


def detect_power_sensor() -> PowerSensor | None:
    """The host's energy meter (RAPL, NVML or Jetson rails) as a power sensor, or None."""
    meter = detect_meter()
    return PowerSensor(meter) if meter else None


# ----------------------------------------------------------------------------------------------- cgroup quota
def cgroup_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return f"emulating CPU frequency needs root to write cgroup v1 cpu quotas (uid {os.geteuid()})"
    if not Path("/sys/fs/cgroup/cpu/cgroup.procs").exists():
        return "cgroup v1 'cpu' controller is not mounted at /sys/fs/cgroup/cpu"
    return None


class CpuQuota:
    """A cgroup v1 cpu group of our own whose quota stands for the mode's CPU speed fraction."""

    def __init__(self, name: str | None = None):
        from edgepool.testbed.cgroups import own_cgroup_dir

        self.path = own_cgroup_dir("cpu") / (name or f"edgepool-power-{os.getpid()}")
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (self.path / "cpu.shares").write_text(str(CPU_SHARES))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def set(self, cpus: float) -> None:
        quota = max(MIN_QUOTA_US, int(round(cpus * CFS_PERIOD_US)))
        (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def remove(self) -> None:
        from edgepool.testbed.cgroups import remove_cgroup_dirs

        remove_cgroup_dirs([self.path])


# ----------------------------------------------------------------------------------------------- worker
def _pin_all_threads(cores: int) -> None:
    cpus = set(range(min(cores, os.cpu_count() or 1)))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def _worker(conn, workload: dict) -> None:
    import torch

    torch.set_num_threads(1)
    step = build_step(Workload(**workload))
    step()
    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            return
        cores, threads, min_block_s, blocks = message
        torch.set_num_threads(int(threads))
        _pin_all_threads(int(cores))
        step()  # warm-up: creates the thread pool at this size
        _pin_all_threads(int(cores))
        per_step = []
        for _ in range(blocks):
            start, n = time.perf_counter(), 0
            while True:
                step()
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_block_s and n >= 2:
                    break
            per_step.append(elapsed / n)
        conn.send(per_step)


# ----------------------------------------------------------------------------------------------- table
@dataclass
class ProfileTable:
    """Measured time per minibatch (and power) for workloads x modes of one mode space."""

    space: str
    dims: list[str]
    rows: list[dict] = field(default_factory=list)  # {workload, mode, time_s, power_w, power_source}
    meta: dict = field(default_factory=dict)

    def workloads(self) -> list[str]:
        return sorted({r["workload"] for r in self.rows})

    def modes(self, workload: str) -> list[Mode]:
        return [tuple(r["mode"]) for r in self.rows if r["workload"] == workload]

    def series(self, workload: str, key: str = "time_s") -> dict[Mode, float]:
        return {tuple(r["mode"]): r[key] for r in self.rows if r["workload"] == workload}

    def mode_space(self) -> ModeSpace:
        """The emulated mode grid the table covers (each dimension's measured values)."""
        dims = {d: tuple(sorted({float(r["mode"][i]) for r in self.rows})) for i, d in enumerate(self.dims)}
        presets = {"max": tuple(v[-1] for v in dims.values())}
        return ModeSpace(name=self.space, dims=dims, presets=presets, emulated=True,
                         sources={"grid": "modes measured in this profile table"})

    def to_dict(self) -> dict:
        return {"space": self.space, "dims": self.dims, "meta": self.meta, "rows": self.rows}

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename), so a cut-off run leaves no table that looks complete."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ProfileTable":
        raw = json.loads(Path(path).read_text())
        return cls(space=raw["space"], dims=raw["dims"], rows=raw["rows"], meta=raw.get("meta", {}))


Worker = tuple[Workload, "mp.connection.Connection", "mp.Process"]  # a workload, its pipe end, its process
MODELLED_POWER = "modelled (no power sensor on this host)"
EMULATION = "cgroup v1 cpu quota + affinity + torch threads"


def profile_modes(space: ModeSpace, workloads: list[Workload], modes: list[Mode] | None = None,
                  min_block_s: float = 0.08, blocks: int = 2, passes: int = 1, seed: int = 0,
                  progress: bool = False, log: Callable[[str], None] = print) -> ProfileTable:
    """Time each workload's minibatch in each mode: the fastest block (each >= `min_block_s`) over
    `passes` sweeps of all modes in different random orders. Other jobs only ever slow a block down, so the
    fastest of blocks taken minutes apart is the least disturbed estimate on a shared host."""
    if not space.emulated:
        raise NotImplementedError(
            f"setting {space.name} modes needs the device itself (nvpmodel / jetson_clocks); this profiler "
            "emulates the local mode space only (edgepool.power.modes.local_mode_space)")
    modes = list(modes if modes is not None else space.modes())
    reason = cgroup_unavailable_reason()
    if reason:
        modes = _full_speed_modes(space, modes, reason, log)
    sensor = detect_power_sensor()
    power_model = power_model_for(space)
    quota = None if reason else CpuQuota()
    workers: list[Worker] = []
    table = ProfileTable(space=space.name, dims=space.dim_names)
    started = time.time()
    try:
        _start_workers(workloads, quota, workers)
        bar = _progress(progress, len(modes) * len(workloads) * passes)
        blocks_of, watts_of = _sweep(space, modes, workers, quota, sensor, min_block_s=min_block_s,
                                      blocks=blocks, passes=passes, seed=seed, bar=bar)
        table.rows = _rows(space, workloads, modes, blocks_of, watts_of, sensor, power_model)
    finally:
        _stop_workers(workers, quota)
    table.meta = {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs)",
        "measured": "time per minibatch, real, on this host (fastest block); "
                    + ("power measured by " + sensor.name if sensor else "power modelled: " + power_model.source),
        "emulation": reason or EMULATION,
        "workloads": [w.to_dict() for w in workloads],
        "modes": len(modes), "passes": passes, "blocks_per_pass": blocks, "min_block_s": min_block_s,
        "wall_s": round(time.time() - started, 1),
        "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return table


def _full_speed_modes(space: ModeSpace, modes: list[Mode], reason: str, log: Callable[[str], None]) -> list[Mode]:
    """Without cgroup quotas only the modes at full CPU speed can be emulated."""
    kept = [m for m in modes if space.describe(m)["cpu_fraction"] == 1.0]
    log(f"note: {reason}; profiling only the {len(kept)} modes with cpu_fraction = 1.0 "
        "(threads and cores only)")
    return kept


def _start_workers(workloads: list[Workload], quota: CpuQuota | None, workers: list[Worker]) -> None:
    """Start one worker process per workload (in the quota's group), appending each to `workers` as it
    starts so that the caller can stop them all if a later one fails; then wait until every one is ready."""
    ctx = mp.get_context("spawn")
    for w in workloads:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, w.to_dict()), daemon=True)
        with _environment(WORKER_ENV):
            proc.start()
        if quota:
            quota.add(proc.pid)
        workers.append((w, parent, proc))
    for _, parent, _ in workers:
        if parent.recv() != "ready":
            raise RuntimeError("a profiler worker failed to start")


def _sweep(space: ModeSpace, modes: list[Mode], workers: list[Worker], quota: CpuQuota | None,
           sensor: PowerSensor | None, *, min_block_s: float, blocks: int, passes: int, seed: int,
           bar: Callable[[str], None]) -> tuple[dict, dict]:
    """`passes` sweeps over the modes, each in its own random order: set the mode's quota, then time every
    workload in it. Returns the per-step time of every block and the watts read over each, per
    (workload name, mode)."""
    blocks_of: dict = {}
    watts_of: dict = {}
    rng = random.Random(seed)
    for _ in range(passes):
        order = list(modes)
        rng.shuffle(order)
        for mode in order:
            d = space.describe(mode)
            if quota:
                quota.set(d["cpu_fraction"] * d["cores"])
            for w, parent, _ in workers:
                if sensor:
                    sensor.read()
                parent.send((d["cores"], d["threads"], min_block_s, blocks))
                blocks_of.setdefault((w.name, mode), []).extend(parent.recv())
                if sensor:
                    watts_of.setdefault((w.name, mode), []).append(sensor.read())
                bar(f"{w.name} {d}")
    return blocks_of, watts_of


def _rows(space: ModeSpace, workloads: list[Workload], modes: list[Mode], blocks_of: dict, watts_of: dict,
          sensor: PowerSensor | None, power_model) -> list[dict]:
    """One table row per workload and mode: the fastest block, every block, and power (measured or modelled)."""
    rows = []
    for w in workloads:
        for mode in modes:
            per_step = blocks_of[(w.name, mode)]
            if sensor:
                watts = float(np.median(watts_of[(w.name, mode)]))
                source = f"measured: {sensor.name}"
            else:
                watts, source = power_model.power(space, mode), MODELLED_POWER
            rows.append({"workload": w.name, "mode": list(mode), "time_s": float(min(per_step)),
                         "time_blocks_s": [float(t) for t in per_step], "power_w": float(watts),
                         "power_source": source})
    return rows


def _stop_workers(workers: list[Worker], quota: CpuQuota | None) -> None:
    """Tell each worker to finish (killing any that do not within 5 s), then remove the quota's group."""
    for _, parent, proc in workers:
        try:
            parent.send(None)
        except OSError:
            pass
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    if quota:
        quota.remove()


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _progress(enabled: bool, total: int) -> Callable[[str], None]:
    if not enabled:
        return lambda _: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.start()
    task = bar.add_task("profiling modes", total=total)
    done = [0]

    def advance(text: str) -> None:
        done[0] += 1
        bar.update(task, advance=1, description=text[:60])
        if done[0] >= total:
            bar.stop()
    return advance


def times_array(table: ProfileTable, workload: str, modes: list[Mode]) -> np.ndarray:
    series = table.series(workload)
    return np.array([series[tuple(m)] for m in modes])
