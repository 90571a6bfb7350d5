"""`run_plan`: execute a training Plan on real processes and return a measured Report.

The runner writes one `WorkerSpec`, starts one worker per device through a launcher, follows their progress,
and turns their timestamps into the same `Report` fields the simulator fills: throughput, iteration time,
per-device busy time and utilization, peak memory, energy (modelled from the emulated device's power
figures; this machine has no energy counters) and a timeline.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.plan import Plan
from edgepool.report import DeviceStats, Report, TimelineEvent
from edgepool.runtime.data import ModelSpec
from edgepool.runtime.launch import make_run_launcher, worker_command
from edgepool.runtime.layout import Layout
from edgepool.runtime.worker import WorkerSpec

COMPUTE_KINDS = ("fwd", "bwd", "optimizer")

ProgressFn = Callable[[int, int], None]  # (iterations done by every rank, total)


@dataclass
class RunOutcome:
    report: Report
    results: list[dict]  # one per rank, as the workers wrote them
    run_dir: Path
    launcher: dict = field(default_factory=dict)

    def state_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("state-rank*.pt"))


def run_plan(plan: Plan, cluster: Cluster | None = None, launcher="local", steps: int = 5, **kwargs) -> Report:
    """Run `plan` for `steps` iterations and return the measured Report (see `execute` for options)."""
    return execute(plan, cluster, launcher=launcher, steps=steps, **kwargs).report


def execute(plan: Plan, cluster: Cluster | None = None, launcher="local", steps: int = 5,
            model: ModelSpec | str | None = None, batch: int | None = None, warmup: int = 1,
            optimizer: str = "sgd", lr: float = 0.01, data_seed: int = 0, timeout_s: float = 300.0,
            run_dir: str | Path | None = None, save_state: bool = False, progress: ProgressFn | None = None,
            env: dict[str, str] | None = None, cost_model: CostModel | None = None, command: str | None = None,
            hooks: list[str] | None = None, testbed_options: dict | None = None) -> RunOutcome:
    """Run `plan` for real.

    `launcher` is "local", "testbed" (falls back to local without root, saying so in the report) or a started
    launcher object to reuse (several runs on one testbed). `warmup` iterations run but are not timed.
    """
    if plan.kind != "training":
        raise SpecError(field="plan.kind", value=plan.kind, accepted="training (inference plans run elsewhere)")
    if not plan.feasible:
        raise SpecError(field="plan.feasible", value=False, accepted="a feasible plan",
                        hint=plan.infeasible_reason)
    if steps < 1:
        raise SpecError(field="steps", value=steps, accepted="an integer >= 1")
    if cluster is not None:
        unknown = [d for d in plan.devices if d not in cluster.devices]
        if unknown:
            raise SpecError(field="plan devices", value=unknown, accepted=", ".join(cluster.devices),
                            hint="the plan was made for another cluster")
    model_spec = model if isinstance(model, ModelSpec) else ModelSpec(name=model or plan.model)
    if model_spec.name and not model_spec.factory:  # a plan file's seq against the model, before anything starts
        from edgepool.models import build_model
        from edgepool.profile import check_seq
        check_seq(build_model(model_spec.name, meta=True, **model_spec.overrides), plan.seq, field="plan.seq")
    layout = Layout(plan, batch)  # validates batch vs micro-batches before anything starts
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="edgepool-run-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("result-rank*.json", "progress-rank*", "state-rank*.pt", "error-rank*.txt", "report.json"):
        for stale in run_dir.glob(pattern):  # a re-used folder must not show an earlier run's results
            stale.unlink()
    spec = WorkerSpec(plan=plan.model_dump(mode="json"), model=model_spec.to_dict(), steps=steps,
                      out_dir=str(run_dir.resolve()), batch=layout.batch, seq=plan.seq, data_seed=data_seed,
                      optimizer=optimizer, lr=lr, timeout_s=timeout_s, save_state=save_state, hooks=hooks or [])
    spec_path = run_dir / "worker-spec.json"
    spec.save(spec_path)

    owned = isinstance(launcher, str)
    runner = make_run_launcher(launcher, cluster, **(testbed_options or {})) if owned else launcher
    commands = {d: worker_command(spec_path) for d in plan.devices}
    try:
        if owned:
            runner.__enter__()
        runner.launch(commands, env=env, log_dir=run_dir / "logs")
        deadline = time.monotonic() + timeout_s
        _follow(runner, run_dir, len(plan.devices), steps, deadline, progress)
        runner.wait(timeout=max(deadline - time.monotonic(), 1.0))  # raises WorkerFailed / TimeoutError
        description = runner.describe() if hasattr(runner, "describe") else {"launcher": runner.kind}
    finally:
        if owned:
            runner.__exit__(None, None, None)
    results = [json.loads((run_dir / f"result-rank{r}.json").read_text()) for r in range(len(plan.devices))]
    report = build_report(plan, cluster, results, layout.batch, warmup, description, cost_model,
                          command or _command_line())
    report.save(run_dir / "report.json")
    return RunOutcome(report, results, run_dir, description)


def _follow(runner, run_dir: Path, world: int, steps: int, deadline: float, progress: ProgressFn | None) -> None:
    """Poll workers and their progress files until all exit or one fails (then `wait` raises)."""
    reported = -1
    while time.monotonic() < deadline:
        codes = [h.poll() for h in runner.handles]
        if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes):
            break
        if progress is not None:
            done = min(_read_progress(run_dir / f"progress-rank{r}") for r in range(world))
            if done != reported:
                progress(done, steps)
                reported = done
        time.sleep(0.2)
    if progress is not None:
        progress(min(_read_progress(run_dir / f"progress-rank{r}") for r in range(world)), steps)


def _read_progress(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def build_report(plan: Plan, cluster: Cluster | None, results: list[dict], batch: int, warmup: int,
                 launcher: dict, cost_model: CostModel | None = None, command: str = "") -> Report:
    """Measured Report from the workers' timestamps. Per-device figures are per timed iteration."""
    steps = len(results[0]["iteration_ends"])
    warmup = warmup if steps > warmup else 0
    origin = min(r["t0"] for r in results)
    ends = [max(r["iteration_ends"][k] for r in results) for k in range(steps)]
    start = ends[warmup - 1] if warmup else origin
    timed = steps - warmup
    iteration_time = (ends[-1] - start) / timed
    per_iteration = [ends[k] - (ends[k - 1] if k else origin) for k in range(steps)]
    cost_model = cost_model or CostModel(precision=plan.precision)

    per_device: dict[str, DeviceStats] = {}
    limits = launcher.get("devices", {})
    for r in results:
        busy = sum(e["end"] - e["start"] for e in r["events"]
                   if e["kind"] in COMPUTE_KINDS and e["iteration"] >= warmup) / timed
        energy = 0.0
        if cluster is not None and r["device"] in cluster.devices:
            energy = cost_model.energy(cluster.devices[r["device"]], busy, max(iteration_time - busy, 0.0))
        per_device[r["device"]] = DeviceStats(
            busy_s=busy, utilization=min(busy / iteration_time, 1.0) if iteration_time > 0 else 0.0,
            peak_memory_bytes=float(r["peak_rss_bytes"]),
            memory_limit_bytes=limits.get(r["device"], {}).get("memory_limit_bytes"),
            energy_j=energy, energy_source="modelled")
    timeline = [TimelineEvent(device=e["device"], kind=e["kind"], start=e["start"] - origin, end=e["end"] - origin,
                              microbatch=e["microbatch"], stage=e["stage"], iteration=e["iteration"])
                for r in results for e in r["events"]]
    timeline.sort(key=lambda e: (e.start, e.device))
    losses = [sum(r["losses"][k] for r in results if r["losses"]) for k in range(steps)]
    kind = launcher.get("launcher", "?")
    hosts = {r.get("host") or platform.node(): r.get("cpu_count") or os.cpu_count() for r in results}
    machine = (f"{platform.node()} ({os.cpu_count()} CPU cores, shared with other jobs; " if len(hosts) == 1
               and platform.node() in hosts else  # results gathered from other hosts (`edgepool report gather`)
               f"{len(hosts)} host(s) {', '.join(f'{h} ({n} CPU cores)' for h, n in sorted(hosts.items()))} (")
    where = (f"measured on {machine}{kind} launcher, gloo, one process per device, 1 torch thread each)"
             + (f"; command: {command}" if command else ""))
    if launcher.get("fallback_reason"):
        where += f"; testbed unavailable ({launcher['fallback_reason']}), ran unshaped local processes"
    return Report(
        source="measured", where=where, planner=plan.planner, model=plan.model, cluster=plan.cluster,
        throughput=batch / iteration_time, iteration_time_s=iteration_time, per_device=per_device,
        timeline=timeline,
        metrics={
            "steps": steps, "warmup_steps": warmup, "batch": batch, "microbatches": plan.microbatches,
            "schedule": plan.schedule, "loss_per_step": losses, "iteration_time_per_step_s": per_iteration,
            "p2p_bytes_per_iteration": sum(r["bytes_sent"] for r in results) / steps,
            "allreduce_bytes_per_iteration": {r["device"]: r["allreduce_bytes"] for r in results},
            "max_rss_bytes": {r["device"]: r["max_rss_bytes"] for r in results},
            "cpu_s_per_iteration": {r["device"]: sum(r["iteration_cpu_s"][warmup:]) / max(steps - warmup, 1)
                                    for r in results if r.get("iteration_cpu_s")},
            "busy_definition": "fwd + bwd + optimizer time per timed iteration (waiting on messages excluded)",
            "energy": "modelled: catalog idle/max power of each device x measured busy/idle time per iteration",
            "timeline_clock": "time.time() of each worker, relative to the first worker's start",
            "launcher": launcher,
        })
