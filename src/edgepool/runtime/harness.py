"""The one worker harness: how every runner, probe and supervisor starts its worker processes.

A job is a folder holding one job file (JSON, written atomically). Each device runs
`python -m MODULE JOB.json` through a `Launcher` (local processes, the emulated testbed), reads the job, and
writes its result as JSON into the folder (`rank<R>.json` unless the caller names another file).
`run_workers` starts such a group, polls it (calling `on_tick` meanwhile: progress files, streamed tokens),
surfaces a failure through the launcher's `wait` (`WorkerFailed` naming the device, or `TimeoutError`; the
other workers are stopped) and returns the results in rank order.

A supervisor that starts, restarts and adds workers one at a time (elastic training) cannot launch a group;
it uses the pieces: `write_job`, `worker_argv` and `read_results`.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from edgepool.atomic import write_text_atomic

JOB_NAME = "job.json"
RESULT_NAME = "rank{rank}.json"  # formatted with the worker's rank


@dataclass(frozen=True)
class WorkerJob:
    """A job folder and the job file in it that every worker of the group reads."""

    folder: Path
    path: Path

    @classmethod
    def create(cls, payload: dict, folder: str | Path | None = None, name: str = JOB_NAME,
               prefix: str = "edgepool-job-") -> "WorkerJob":
        """Write `payload` as the job file in `folder` (a new temporary folder when None)."""
        folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=prefix))
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, write_job(payload, folder, name))

    def discard(self) -> None:
        """Remove the folder once its results are read (a probe's); a failed job never gets here, so its
        folder stays, with the workers' logs."""
        shutil.rmtree(self.folder, ignore_errors=True)


def write_job(payload: dict, folder: str | Path, name: str = JOB_NAME) -> Path:
    """The job file, atomically: a worker that starts early never reads half of it."""
    return write_text_atomic(Path(folder) / name, json.dumps(payload))


def read_job(path: str | Path) -> dict:
    """Worker side: the job this process was started with."""
    return json.loads(Path(path).read_text())


def write_result(folder: str | Path, rank: int, result: dict, name: str = RESULT_NAME) -> Path:
    """Worker side: this rank's result in the job folder, atomically (the host reads it once the process exits)."""
    return write_text_atomic(Path(folder) / name.format(rank=rank), json.dumps(result))


def worker_argv(module: str, job_path: str | Path, python: str | None = None) -> list[str]:
    """The command that starts one worker: `python -m MODULE JOB.json`."""
    return [python or sys.executable, "-m", module, str(job_path)]


def read_results(folder: str | Path, names: Iterable[str]) -> list[dict]:
    """The workers' JSON results, in the order of `names` (file names inside `folder`)."""
    return [json.loads((Path(folder) / name).read_text()) for name in names]


def describe_launcher(launcher) -> dict:
    """What the launcher ran the workers on (its `describe()`, for a report's `where`), at least its kind."""
    describe = getattr(launcher, "describe", None)
    return describe() if describe else {"launcher": getattr(launcher, "kind", "unknown")}


def run_workers(launcher, module: str, job: WorkerJob, devices: Sequence[str], timeout_s: float,
                env: dict[str, str] | None = None, on_tick: Callable[[], None] | None = None,
                tick_s: float = 0.05, result_name: str = RESULT_NAME) -> list[dict]:
    """Start `module` on every device (rank = position in `devices`), wait for all, return their results.

    `on_tick` is called every `tick_s` while the workers run and once after they stopped. Raises
    `WorkerFailed` (the failed device and its log's cause) or `TimeoutError` past `timeout_s`; in both cases,
    and if `on_tick` raises, the other workers are stopped so that the launcher can be used again.
    """
    handles = launcher.launch({d: worker_argv(module, job.path) for d in devices}, env=env,
                              log_dir=job.folder / "logs")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if on_tick is not None:
                on_tick()
            codes = [h.poll() for h in handles]
            if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes) or time.monotonic() > deadline:
                break
            time.sleep(tick_s)
        if on_tick is not None:
            on_tick()
        launcher.wait(timeout=max(deadline - time.monotonic(), 1.0))  # raises WorkerFailed / TimeoutError
    except BaseException:
        stop = getattr(launcher, "stop_workers", None)
        if stop is not None:
            stop()
        raise
    return read_results(job.folder, [result_name.format(rank=r) for r in range(len(devices))])
