"""One task on one or more devices: every policy at every floor, accuracy measured on held-out data.

`Workbench` holds what is measured once per task (the trained units, their emulated variants, the
sensitivity table, the per-unit profile); `evaluate_device` runs the policies for one device and returns
plain rows. Accuracies are measured here, for real (validation for the floor, test for the report); times
and energies come from the cost model and are simulated.
"""
from __future__ import annotations

import copy
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from edgepool.catalog import get_device
from edgepool.device import Device
from edgepool.errors import SpecError
from edgepool.local_device import torch_threads
from edgepool.models.zoo import ModelBundle
from edgepool.precision.cost import CostTable, UnitCost, unit_costs
from edgepool.precision.emulate import Evaluator, PrecisionEmulator
from edgepool.precision.input_dependent import Routing, measure_test, route
from edgepool.precision.placement import Placement, device_targets
from edgepool.precision.policies import AllAccelerator, AllCpu, MlmpMaxAccuracy, MlmpMinTime, Oracle, Ours
from edgepool.precision.policy import PlacementPolicy
from edgepool.precision.problem import PlacementProblem
from edgepool.precision.sensitivity import SensitivityTable, cached_sensitivity
from edgepool.precision.tasks import PrecisionTask, load_task
from edgepool.profile import profile_model

FLOORS = (0.5, 1.0)  # points below all-CPU accuracy, the two floors
PROFILE_BATCH = 8

Progress = Callable[[str, int, int], None]


@dataclass
class PolicyRow:
    """One policy's placement at one floor on one device: measured accuracy, simulated time and energy."""

    task: str
    device: str
    floor_points: float | None  # None: the policy ignores the floor
    policy: str
    placement: str
    validation_accuracy: float
    test_accuracy: float
    time_ms: float  # simulated
    energy_mj: float  # simulated
    cpu_ms: float
    accelerator_ms: float
    transfer_ms: float
    switches: int
    units_on_accelerator: int
    decide_s: float  # wall time the policy took to decide, measurements included
    measured_placements: int  # distinct placements the policy had measured on validation to decide
    fast_fraction: float | None = None  # input-dependent: share of test inputs sent to the fast placement

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Workbench:
    task: PrecisionTask
    evaluator: Evaluator
    sensitivity: SensitivityTable
    units: list[UnitCost]
    measured_on: str
    measured: dict[tuple[str, ...], float] = field(default_factory=dict)  # validation accuracy per precision tuple

    def reference_accuracy(self, split: str = "validation") -> float:
        return self.evaluator.accuracy(("fp32",) * self.task.num_units, split)

    def problem(self, device: Device, max_loss_points: float) -> PlacementProblem:
        """The placement problem on `device` at `max_loss_points` below all-CPU (validation accuracy)."""
        precisions = {t.precision for t in device_targets(device)}
        missing = precisions - {"fp32"} - set(self.sensitivity.precisions)
        if missing:
            raise SpecError(field="device", value=device.name, accepted="a device whose accelerator computes in "
                            f"{', '.join(self.sensitivity.precisions)} (this workbench has no {sorted(missing)})")
        n = self.task.num_units
        proxy = [{p: (0.0 if p == "fp32" else max(self.sensitivity.kl[p][i], 0.0)) for p in precisions}
                 for i in range(n)]
        drops = [{p: (0.0 if p == "fp32" else self.sensitivity.drop(i, p)) for p in precisions} for i in range(n)]
        return PlacementProblem(CostTable.build(device, self.units), proxy, drops, self.reference_accuracy(),
                                max_loss_points, lambda precs: self.evaluator.accuracy(precs, "validation"),
                                measured=self.measured)


def profile_units(task: PrecisionTask, batch: int = PROFILE_BATCH) -> tuple[list[UnitCost], str]:
    """Per-input FLOPs and bytes of each unit (`profile_model`, the one profiler) and its fp32 time here."""
    sample = task.sample(batch)
    task.set_context(sample)
    # a copy: profiling runs in training mode, where batch norm would update the model's running statistics
    bundle = ModelBundle(name=task.name, kind="custom", blocks=copy.deepcopy(task.units), input_kind="tensor",
                         custom_input=lambda b: sample.x[:b])
    with torch_threads(1):  # one core, as a device's CPU side is timed one input stream at a time
        profile = profile_model(bundle, batch=len(sample), measure=True, repeats=3)
    where = f"{platform.node()} ({platform.machine()}, 1 torch thread, batch {len(sample)})"
    tables = [float(sum(m.weight.numel() * m.weight.element_size() for m in unit.modules()
                        if isinstance(m, torch.nn.Embedding))) for unit in task.units]
    return unit_costs(profile, tables), where


def low_precisions(devices: list[Device]) -> tuple[str, ...]:
    """The precisions other than fp32 that these devices' accelerators compute in (what to emulate)."""
    return tuple(sorted({t.precision for d in devices for t in device_targets(d)} - {"fp32"}))


def open_workbench(task_name: str, precisions: tuple[str, ...], cache_dir: Path | None = None, seed: int = 0,
                   progress: Progress | None = None) -> Workbench:
    """Load (or train) the task, build its emulated variants and measure (or load) its sensitivity table."""
    task = load_task(task_name, seed=seed, cache_dir=cache_dir, progress=progress)
    emulator = PrecisionEmulator(task, precisions, progress=progress)
    evaluator = Evaluator(task, emulator)
    path = cache_dir / f"{task_name}-seed{seed}-{'-'.join(precisions)}-sensitivity.json" if cache_dir else None
    table = cached_sensitivity(evaluator, precisions, path, progress=progress)
    units, where = profile_units(task)
    return Workbench(task, evaluator, table, units, where)


def _row(bench: Workbench, problem: PlacementProblem, policy: str, placement: Placement, floor: float | None,
         decide_s: float) -> PolicyRow:
    estimate = problem.costs.estimate(placement)
    return PolicyRow(
        task=bench.task.name, device=problem.costs.device.name, floor_points=floor, policy=policy,
        placement=placement.describe(), validation_accuracy=problem.accuracy(placement.targets),
        test_accuracy=bench.evaluator.accuracy(placement.precisions, "test"), time_ms=estimate.time_s * 1e3,
        energy_mj=estimate.energy_j * 1e3, cpu_ms=estimate.cpu_s * 1e3, accelerator_ms=estimate.accelerator_s * 1e3,
        transfer_ms=estimate.transfer_s * 1e3, switches=estimate.switches,
        units_on_accelerator=placement.on_accelerator(), decide_s=decide_s,
        measured_placements=len(problem.queried))


def _routing_text(routing: Routing) -> str:
    if routing.probe is None:
        return "no routing pays: " + " ".join(str(t) for t in routing.accurate)
    k, show = routing.probe_after, lambda targets: " ".join(str(t) for t in targets)  # noqa: E731
    if routing.restart:
        return (f"[{show(routing.fast[:k])}] probe: {routing.fast_fraction:.0%} go on [{show(routing.fast[k:])}], "
                f"the rest restart on [{show(routing.accurate)}]")
    return (f"[{show(routing.accurate[:k])}] probe: {routing.fast_fraction:.0%} go on [{show(routing.fast[k:])}], "
            f"the rest on [{show(routing.accurate[k:])}]")


def _routing_row(bench: Workbench, problem: PlacementProblem, routing: Routing, floor: float,
                 decide_s: float) -> PolicyRow:
    fast, accurate = problem.costs.estimate(routing.fast), problem.costs.estimate(routing.accurate)
    share = routing.fast_fraction
    again = problem.costs.prefix(routing.fast, routing.probe_after) if routing.restart else None
    # milliseconds (millijoules) per input over the routed mix; restarted inputs pay the fast prefix too
    mix = lambda field: (share * getattr(fast, field) + (1 - share) * (  # noqa: E731
        getattr(accurate, field) + (getattr(again, field) if again else 0.0))) * 1e3
    return PolicyRow(
        task=bench.task.name, device=problem.costs.device.name, floor_points=floor, policy="input-dependent",
        placement=_routing_text(routing),
        validation_accuracy=routing.validation_accuracy, test_accuracy=routing.test_accuracy,
        time_ms=routing.time_s * 1e3, energy_mj=mix("energy_j"), cpu_ms=mix("cpu_s"),
        accelerator_ms=mix("accelerator_s"), transfer_ms=mix("transfer_s"),
        switches=max(fast.switches, accurate.switches),
        units_on_accelerator=sum(t.on_accelerator for t in routing.fast), decide_s=decide_s,
        measured_placements=routing.measured, fast_fraction=routing.test_fast_fraction)


def floor_policies(rl_timesteps: int = 0) -> list[PlacementPolicy]:
    policies: list[PlacementPolicy] = [MlmpMinTime(), MlmpMaxAccuracy(), Ours()]
    if rl_timesteps:
        from edgepool.precision.rl import RLPolicy

        policies.append(RLPolicy(timesteps=rl_timesteps))
    return policies + [Oracle()]


def evaluate_device(bench: Workbench, device: Device, floors=FLOORS, rl_timesteps: int = 0,
                    input_dependent: bool = True, progress: Progress | None = None) -> list[PolicyRow]:
    """Rows for all-CPU and all-accelerator, then every floor policy (and the input-dependent one) per floor."""
    base = bench.problem(device, floors[0])
    rows = []
    for policy in (AllCpu(), AllAccelerator()):
        start, problem = time.perf_counter(), base.with_floor(floors[0])
        placement = policy.place(problem)
        rows.append(_row(bench, problem, policy.name, placement, None, time.perf_counter() - start))
    policies = floor_policies(rl_timesteps)
    placed = {}
    total, done = len(floors) * (len(policies) + input_dependent), 0
    for floor in floors:
        for policy in policies:
            if progress:
                progress(f"{bench.task.name} on {device.name}: {policy.name} at -{floor:g} pt", done, total)
            start, problem = time.perf_counter(), base.with_floor(floor)
            placement = policy.place(problem).check(device, problem.num_units)
            placed[policy.name, floor] = placement.targets
            rows.append(_row(bench, problem, policy.name, placement, floor, time.perf_counter() - start))
            done += 1
        if input_dependent:
            if progress:
                progress(f"{bench.task.name} on {device.name}: input-dependent at -{floor:g} pt", done, total)
            start, problem = time.perf_counter(), base.with_floor(floor)
            routing = measure_test(route(problem, bench.evaluator, placed[Ours.name, floor]), bench.evaluator)
            rows.append(_routing_row(bench, problem, routing, floor, time.perf_counter() - start))
            done += 1
    if progress:
        progress(f"{bench.task.name} on {device.name}", total, total)
    return rows


def resolve_device(name: str) -> Device:
    device = get_device(name)
    device_targets(device)  # refuses a device without an accelerator, naming the field
    return device


def draw_pareto_time_accuracy(rows: list[PolicyRow], path: Path, title: str) -> Path:
    """Test accuracy against simulated time, one colour per policy, one marker per floor."""
    from edgepool.plotting import save_figure, plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    policies = list(dict.fromkeys(r.policy for r in rows))
    colors = plt.get_cmap("tab10").colors
    markers = {None: "s", **{f: m for f, m in zip(sorted({r.floor_points for r in rows if r.floor_points}),
                                                    "o^vD<>")}}
    for i, policy in enumerate(policies):
        for r in (r for r in rows if r.policy == policy):
            label = policy if r is next(x for x in rows if x.policy == policy) else None
            ax.scatter(r.time_ms, 100 * r.test_accuracy, color=colors[i % 10], marker=markers[r.floor_points],
                       s=40, label=label, alpha=0.85, edgecolors="black", linewidths=0.3)
    for floor in sorted({r.floor_points for r in rows if r.floor_points}):
        ax.plot([], [], linestyle="", marker=markers[floor], color="gray", label=f"floor -{floor:g} pt")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("time per input, ms (simulated, cost model; log scale)")
    ax.set_ylabel("test accuracy, % (measured)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)
