"""`run_plan`: execute a training Plan on real processes and return a measured Report.

The runner writes one `WorkerSpec`, starts one worker per device through a launcher, follows their progress,
and turns their timestamps into the same `Report` fields the simulator fills: throughput, iteration time,
per-device busy time and utilization, peak memory, energy (modelled per device from the emulated device's power
figures; where this host has an energy meter, `edgepool.meters` also measures the whole launch) and a timeline.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.meters import host_energy
from edgepool.plan import Plan
from edgepool.report import COMPUTE_KINDS, DeviceStats, Report, TimelineEvent
from edgepool.runtime.data import ModelSpec
from edgepool.runtime.harness import WorkerJob, describe_launcher, run_workers
from edgepool.runtime.launch import started_launcher
from edgepool.runtime.layout import Layout
from edgepool.runtime.worker import WorkerSpec

WORKER_MODULE = "edgepool.runtime.worker"
SPEC_NAME = "worker-spec.json"  # `edgepool report gather` reads the copy each worker keeps
RESULT_NAME = "result-rank{rank}.json"

ProgressFn = Callable[[int, int], None]  # (iterations done by every rank, total)


@dataclass
class RunOutcome:
    report: Report
    results: list[dict]  # one per rank, as the workers wrote them
    run_dir: Path
    launcher: dict = field(default_factory=dict)

    def state_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("state-rank*.pt"))


@dataclass(frozen=True)
class RunOptions:
    """How `execute` runs a plan, beyond the plan, the cluster and the launcher."""

    # what the workers do
    steps: int = 5
    model: ModelSpec | str | None = None  # None: the plan's model
    batch: int | None = None  # None: the plan's batch
    warmup: int = 1  # iterations run but not timed
    optimizer: str = "sgd"
    lr: float = 0.01
    data_seed: int = 0
    save_state: bool = False  # each rank saves its stage's weights (`RunOutcome.state_files`)
    hooks: list[str] = field(default_factory=list)  # "pkg.mod:Class" iteration hooks (`runtime.worker`)
    # how they run
    timeout_s: float = 300.0
    run_dir: str | Path | None = None  # None: a new temporary folder
    env: dict[str, str] | None = None
    testbed_options: dict = field(default_factory=dict)  # for a launcher `execute` makes by name
    # what they report
    progress: ProgressFn | None = None
    cost_model: CostModel | None = None  # for the modelled energy
    command: str | None = None  # the command line the report names (default: this process's)


def run_plan(plan: Plan, cluster: Cluster | None = None, launcher="local", steps: int = 5, **options) -> Report:
    """Run `plan` for `steps` iterations and return the measured Report (`options`: `RunOptions` fields)."""
    return execute(plan, cluster, launcher, RunOptions(steps=steps, **options)).report


def execute(plan: Plan, cluster: Cluster | None = None, launcher="local",
            options: RunOptions | None = None) -> RunOutcome:
    """Run `plan` for real.

    `launcher` is "local", "testbed" (falls back to local without root, saying so in the report) or a started
    launcher object to reuse (several runs on one testbed).
    """
    options = options or RunOptions()
    model_spec, layout = _check(plan, cluster, options)
    run_dir = _fresh_run_dir(options.run_dir)
    spec = WorkerSpec(plan=plan.model_dump(mode="json"), model=model_spec.to_dict(), steps=options.steps,
                      out_dir=str(run_dir.resolve()), batch=layout.batch, seq=plan.seq, data_seed=options.data_seed,
                      optimizer=options.optimizer, lr=options.lr, timeout_s=options.timeout_s,
                      save_state=options.save_state, hooks=list(options.hooks))
    job = WorkerJob.create(asdict(spec), run_dir, name=SPEC_NAME)
    tick = _ProgressTick(run_dir, len(plan.devices), options.steps, options.progress) if options.progress else None
    with started_launcher(launcher, cluster, **options.testbed_options) as runner:
        with host_energy() as energy:  # the timed window is inside the workers: meter the whole launch
            results = run_workers(runner, WORKER_MODULE, job, plan.devices, options.timeout_s, env=options.env,
                                  on_tick=tick, tick_s=0.2, result_name=RESULT_NAME)
        description = describe_launcher(runner)
    report = build_report(plan, cluster, results, layout.batch, options.warmup, description, options.cost_model,
                          options.command or _command_line())
    report.metrics.update(energy.metrics({r["device"]: r.get("host") or platform.node() for r in results},
                                         report.iteration_time_s))
    report.save(run_dir / "report.json")
    return RunOutcome(report, results, run_dir, description)


def _check(plan: Plan, cluster: Cluster | None, options: RunOptions) -> tuple[ModelSpec, Layout]:
    """Reject what cannot run before any process starts; the model spec and the batch layout."""
    if plan.kind != "training":
        raise SpecError(field="plan.kind", value=plan.kind, accepted="training (inference plans run elsewhere)")
    if not plan.feasible:
        raise SpecError(field="plan.feasible", value=False, accepted="a feasible plan",
                        hint=plan.infeasible_reason)
    if options.steps < 1:
        raise SpecError(field="steps", value=options.steps, accepted="an integer >= 1")
    if cluster is not None:
        unknown = [d for d in plan.devices if d not in cluster.devices]
        if unknown:
            raise SpecError(field="plan devices", value=unknown, accepted=", ".join(cluster.devices),
                            hint="the plan was made for another cluster")
    model = options.model
    model_spec = model if isinstance(model, ModelSpec) else ModelSpec(name=model or plan.model)
    if model_spec.name and not model_spec.factory:  # a plan file's seq against the model, before anything starts
        from edgepool.models import build_model
        from edgepool.profile import check_seq
        check_seq(build_model(model_spec.name, meta=True, **model_spec.overrides), plan.seq, field="plan.seq")
    return model_spec, Layout(plan, options.batch)  # Layout validates batch vs micro-batches


def _fresh_run_dir(run_dir: str | Path | None) -> Path:
    """The run folder, without an earlier run's results (a re-used folder must not show them)."""
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="edgepool-run-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("result-rank*.json", "progress-rank*", "state-rank*.pt", "error-rank*.txt", "report.json"):
        for stale in run_dir.glob(pattern):
            stale.unlink()
    return run_dir


class _ProgressTick:
    """Reports the iterations every rank has done (the least of their progress files) when it changes."""

    def __init__(self, run_dir: Path, world: int, steps: int, progress: ProgressFn):
        self.files = [run_dir / f"progress-rank{r}" for r in range(world)]
        self.steps, self.progress, self.reported = steps, progress, -1

    def __call__(self) -> None:
        done = min(_read_progress(f) for f in self.files)
        if done != self.reported:
            self.progress(done, self.steps)
            self.reported = done


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
