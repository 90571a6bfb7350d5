"""One measured run of a setting in a child process: on its storage, with its page cache state, inside its
power mode's CPU quota (a cgroup v1 pair from the testbed) and its runtime (bare metal, unshare namespaces or
a container)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import edgepool
from edgepool.characterize.container import NAMESPACES_LABEL_NOTE, UNSHARE, container_prefix
from edgepool.characterize.dataset import dataset_on
from edgepool.characterize.measurement import Measurement, summarize
from edgepool.characterize.setting import POWER_MODES, Setting

# The compute runs on one torch thread: it stands in for the accelerator, and the loader workers get the
# other cores. With two OpenMP threads on a shared 2-core VM, one busy neighbour makes every step wait at the
# thread barrier (measured here: 15 ms a step on one thread, 380 ms on two while another process ran).
COMPUTE_THREADS = 1
CHILD_TIMEOUT_S = 600


class MeasurementFailed(RuntimeError):
    """The measuring child process failed or timed out; the message carries its last stderr line."""


def cores_for(power_mode: str) -> float:
    """The cores a power mode may use: a share of this host's cores (emulated by a CFS quota below 1)."""
    return POWER_MODES[power_mode] * (os.cpu_count() or 1)


def measure(setting: Setting, disk_folder: Path, iterations: int, warmup: int, axis: str = "",
            engine: str | None = None, rounds: int = 1) -> Measurement:
    """Run `setting` `rounds` times for `warmup` + `iterations` steps, each in a child process, and summarize
    the measured steps of all rounds together. `engine` is the container engine when setting.runtime ==
    "container" (see `container.container_engine`)."""
    raws = [run_once(setting, disk_folder, iterations, warmup, engine) for _ in range(rounds)]
    return pool(setting, axis, raws)


def pool(setting: Setting, axis: str, raws: list[dict]) -> Measurement:
    """One Measurement from the raw results of several rounds of the same setting (their iterations pooled)."""
    notes = list(dict.fromkeys(n for raw in raws for n in raw["notes"]))
    if len(raws) > 1:
        notes.append(f"{len(raws)} rounds pooled, interleaved with the other settings")
    return summarize(setting.to_dict(), setting.label, axis, [x for r in raws for x in r["stalls"]],
                     [x for r in raws for x in r["computes"]], setting.batch_size, 0,
                     sum(r["cpu_seconds"] for r in raws), sum(r["wall_s"] for r in raws),
                     cores_for(setting.power_mode), notes, sum(r["other_cpu_seconds"] for r in raws),
                     [len(r["stalls"]) for r in raws])


def run_once(setting: Setting, disk_folder: Path, iterations: int, warmup: int,
             engine: str | None = None) -> dict:
    """One child process's raw result: the measured steps' stalls and computes, CPU and wall seconds, notes."""
    folder = dataset_on(setting.storage, disk_folder)
    cores = cores_for(setting.power_mode)
    notes = [f"data read from {folder} ({setting.storage})"]
    cgroup = None
    with tempfile.TemporaryDirectory(prefix="edgepool-characterize-", dir=disk_folder.parent) as tmp:
        request = {"setting": setting.to_dict(), "data_dir": str(folder), "iterations": iterations,
                   "warmup": warmup, "compute_threads": COMPUTE_THREADS,
                   "result_path": str(Path(tmp) / "result.json"), "notes": notes}
        if POWER_MODES[setting.power_mode] < 1.0:
            from edgepool.testbed.cgroups import DeviceCgroup

            cgroup = DeviceCgroup(f"edgepool-characterize-{os.getpid()}", cpu_cores=cores, memory_bytes=None)
            cgroup.create()
            request["cgroup_procs"] = [str(p) for p in cgroup.procs_files]
            notes.append(f"power mode '{setting.power_mode}' emulated: cgroup v1 CPU quota of {cores:g} cores "
                         f"({cgroup.quota_us} us per {cgroup.period_us} us)")
        if setting.runtime == "namespaces":
            notes.append(NAMESPACES_LABEL_NOTE)
        Path(tmp, "request.json").write_text(json.dumps(request))
        argv = [sys.executable, "-m", "edgepool.characterize.pipeline", str(Path(tmp) / "request.json")]
        if setting.runtime == "namespaces":
            argv = UNSHARE + argv
        elif setting.runtime == "container":
            if engine is None:
                raise MeasurementFailed("runtime 'container' needs a container engine; none is available")
            source = Path(edgepool.__file__).resolve().parents[1]
            argv = container_prefix(engine, [source, disk_folder.parent, folder, Path(tmp)]) + argv
        try:
            return _run_child(argv, Path(request["result_path"]))
        finally:
            if cgroup is not None:
                cgroup.remove()


def _run_child(argv: list[str], result_path: Path) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise MeasurementFailed(f"measurement did not finish within {CHILD_TIMEOUT_S} s") from exc
    if proc.returncode != 0 or not result_path.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MeasurementFailed(f"measurement child exited {proc.returncode}: {last}")
    return json.loads(result_path.read_text())
