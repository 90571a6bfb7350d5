"""Runs inference plans for real: one worker process per device, started by a launcher (local or testbed).

`run_job` executes a list of runs in one launch (one process group, so the model is built once per process;
started through the one worker harness, `edgepool.runtime.harness`) and returns what the workers measured;
`measure_plan` wraps one run into a measured `Report`.
"""
from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgepool.plan import Plan
from edgepool.report import DeviceStats, Report
from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers

TASKS = ("forward", "generate", "decode")


@dataclass
class RunSpec:
    """One measurement: `plan` on `model` for `task` (forward pass, greedy generation, or decode steps)."""

    name: str
    model: str
    plan: Plan
    task: str = "forward"
    batch: int = 1
    seq: int = 32
    tiles: int = 1
    repeats: int = 3
    warmup: int = 1
    check: bool = False
    prompt: list[int] | None = None
    max_new_tokens: int = 0
    overrides: dict = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict:
        if self.task not in TASKS:
            raise ValueError(f"task = {self.task!r} is not valid; accepted: {', '.join(TASKS)}")
        d = asdict(self)
        d["plan"] = self.plan.model_dump(mode="json")
        return d


def _devices_of(runs: list[RunSpec]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for d in run.plan.devices:
            if d not in names:
                names.append(d)
    return names


class _TokenStream:
    """Hands each token line the first device appended to its stream file to `on_token`, once."""

    def __init__(self, path: Path, on_token: Callable[[dict], None]):
        self.path, self.on_token, self.seen = path, on_token, 0

    def __call__(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines()[self.seen:]:
            if line.endswith("}"):
                self.on_token(json.loads(line))
                self.seen += 1


def run_job(runs: list[RunSpec], launcher, devices: list[str] | None = None, threads: dict[str, int] | None = None,
            timeout_s: float = 600.0, on_token: Callable[[dict], None] | None = None,
            work_dir: str | Path | None = None) -> dict:
    """Launch one worker per device, execute every run, return {run name: merged result} plus `_ranks`.

    `on_token` receives each generated token ({"step", "token", "step_s"}) of the first generate run as the
    first device streams it.
    """
    devices = devices or _devices_of(runs)
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="edgepool-infer-"))
    job = WorkerJob.create({"devices": devices, "out_dir": str(folder), "threads": threads or {},
                            "timeout_s": int(timeout_s), "runs": [r.to_dict() for r in runs]}, folder)
    stream_file = next((folder / f"tokens-{r.name}.jsonl" for r in runs if r.task == "generate"), None)
    tick = _TokenStream(stream_file, on_token) if stream_file is not None and on_token is not None else None
    ranks = run_workers(launcher, "edgepool.inference.worker", job, devices, timeout_s, on_tick=tick)
    merged: dict = {"_ranks": ranks, "_devices": devices}
    for run in runs:
        per_rank = [r["runs"][run.name] for r in ranks]
        key = "output_rank" if run.task == "forward" else "first_leader"
        main = next(r for r in per_rank if r.get(key))
        merged[run.name] = {**main, "peak_rss_bytes": {ranks[i]["device"]: per_rank[i]["peak_rss_bytes"]
                                                       for i in range(len(ranks))},
                            "cpu_s": {ranks[i]["device"]: per_rank[i].get("cpu_s") for i in range(len(ranks))
                                      if per_rank[i].get("in_plan")}}
    return merged


def where_measured(launcher, command: str) -> str:
    info = describe_launcher(launcher)
    fallback = info.get("fallback_reason")
    kind = info.get("launcher", "?")
    text = f"measured on {platform.node()} ({platform.machine()}), launcher {kind}"
    if fallback:
        text += f" (testbed unavailable: {fallback})"
    return f"{text}; command: {command}"


def report_from(run: RunSpec, result: dict, where: str) -> Report:
    """A measured `Report` of one run."""
    plan = run.plan
    latency = result.get("latency_s")
    per_device = {d: DeviceStats(peak_memory_bytes=float(b)) for d, b in result["peak_rss_bytes"].items()
                  if d in plan.devices}
    metrics = {k: v for k, v in result.items() if k not in ("peak_rss_bytes",)}
    return Report(source="measured", where=where, planner=plan.planner, model=plan.model, cluster=plan.cluster,
                  latency_s=latency, throughput=(run.batch / latency) if latency else None,
                  per_device=per_device, metrics=metrics)


def measure_plan(run: RunSpec, launcher, command: str = "", threads: dict[str, int] | None = None,
                 timeout_s: float = 600.0, on_token: Callable[[dict], None] | None = None) -> Report:
    result = run_job([run], launcher, threads=threads, timeout_s=timeout_s, on_token=on_token)
    return report_from(run, result[run.name], where_measured(launcher, command))
