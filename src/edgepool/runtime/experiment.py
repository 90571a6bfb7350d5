"""Plan, simulate and run on this host, side by side: what `edgepool train`, `edgepool demo` and the runtime
benchmark share.

The plans are made for the cluster *as emulated here* (`testbed.emulated_cluster`: this host's calibrated
single-thread speed times each device's CPU quota, the spec's link bandwidths), because that is the machine
the plan really runs on; the simulator replays each plan on the same emulated cluster, so its error against
the measured run is the cost model's error, not the gap between a Jetson and this host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgepool.cluster import Cluster
from edgepool.plan import Plan
from edgepool.profile import check_seq
from edgepool.report import Report
from edgepool.runtime.data import ModelSpec, build_bundle
from edgepool.runtime.emulation import (HostCalibration, calibrate_host, emulated_cost_model, launcher_emulation,
                                        simulator_error)
from edgepool.runtime.harness import describe_launcher
from edgepool.runtime.launch import make_run_launcher
from edgepool.runtime.runner import ProgressFn, RunOptions, RunOutcome, execute
from edgepool.testbed import emulated_cluster


@dataclass
class Comparison:
    planner: str
    plan: Plan
    simulated: Report
    measured: Report | None = None
    run_dir: Path | None = None

    @property
    def error(self) -> float | None:
        if self.measured is None or not self.measured.throughput or not self.simulated.throughput:
            return None
        return simulator_error(self.simulated.throughput, self.measured.throughput)

    def summary(self) -> dict:
        return {"planner": self.planner, "stages": [len(p.stages) for p in self.plan.pipelines],
                "microbatches": self.plan.microbatches, "schedule": self.plan.schedule,
                "devices": self.plan.devices, "feasible": self.plan.feasible,
                "simulated_throughput": self.simulated.throughput,
                "measured_throughput": self.measured.throughput if self.measured else None,
                "simulator_error": self.error}


@dataclass
class Experiment:
    """One cluster, one model, one launcher kept up across runs (one testbed set-up for every plan)."""

    cluster: Cluster
    model: ModelSpec
    batch: int
    seq: int | None = None
    launcher_kind: str = "testbed"
    optimizer: str = "sgd"
    lr: float = 0.01
    testbed_options: dict = field(default_factory=dict)
    calibration_batch: int | None = None

    def __post_init__(self):
        self.launcher = None
        self.host: HostCalibration | None = None
        self.quota_efficiency: dict[str, float] | None = None  # testbed only: measured fraction of each quota
        self.emulated: Cluster | None = None
        self.cost_model = None

    # -- lifecycle: the testbed (namespaces, cgroups) lives between start() and close()
    def start(self) -> "Experiment":
        self.launcher = make_run_launcher(self.launcher_kind, self.cluster, **self.testbed_options)
        self.launcher.__enter__()
        bundle = build_bundle(self.model)
        check_seq(bundle, self.seq)  # before minutes of calibration, not in a worker
        self.host = calibrate_host(bundle, self.calibration_batch or min(self.batch, 8), self.seq,
                                   optimizer=self.optimizer)
        if self.describe_launcher().get("launcher") == "testbed":  # how fast each device is under its quota
            from edgepool.runtime.probes.speed import measure_quota_efficiency

            self.quota_efficiency = measure_quota_efficiency(self.launcher, self.model, max(1, self.batch // 4),
                                                             self.seq)
        emulation = launcher_emulation(self.cluster, self.describe_launcher(), self.quota_efficiency)
        self.emulated = emulated_cluster(self.cluster, emulation, self.host.core_device())
        self.cost_model = emulated_cost_model(self.emulated, self.host, self.optimizer)
        return self

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.__exit__(None, None, None)
            self.launcher = None

    def __enter__(self) -> "Experiment":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def describe_launcher(self) -> dict:
        return describe_launcher(self.launcher)

    @property
    def profile(self):
        return self.host.profile

    # -- plan, simulate, run
    def plan(self, planner: str, constraints: dict | None = None) -> Plan:
        from edgepool.planners import get_planner

        return get_planner(planner).plan(self.profile, self.emulated, self.cost_model, self.batch,
                                         constraints=constraints)

    def simulate(self, plan: Plan) -> Report:
        from edgepool.simulator import simulate

        return simulate(plan, self.emulated, self.cost_model, self.profile)

    def compare(self, planner: str, constraints: dict | None = None) -> Comparison:
        plan = self.plan(planner, constraints)
        return Comparison(planner, plan, self.simulate(plan))

    def run(self, comparison: Comparison, steps: int, run_dir: str | Path | None = None,
            progress: ProgressFn | None = None, command: str | None = None, warmup: int = 1) -> RunOutcome:
        options = RunOptions(steps=steps, model=self.model, batch=self.batch, warmup=warmup,
                             optimizer=self.optimizer, lr=self.lr, run_dir=run_dir, progress=progress,
                             cost_model=self.cost_model, command=command)
        outcome = execute(comparison.plan, self.cluster, self.launcher, options)
        comparison.measured, comparison.run_dir = outcome.report, outcome.run_dir
        outcome.report.metrics["simulated_throughput"] = comparison.simulated.throughput
        outcome.report.metrics["simulator_error"] = comparison.error
        outcome.report.metrics["emulation"] = {"host": self.host.to_dict(), "cluster": self.emulated.name,
                                               "quota_efficiency": self.quota_efficiency}
        return outcome


def best(comparisons: list[Comparison], key: Callable[[Comparison], float | None] = lambda c: c.simulated.throughput
         ) -> Comparison:
    feasible = [c for c in comparisons if c.plan.feasible and key(c)]
    if not feasible:
        raise RuntimeError("no planner produced a feasible plan: " + "; ".join(
            f"{c.planner}: {c.plan.infeasible_reason}" for c in comparisons))
    return max(feasible, key=key)
