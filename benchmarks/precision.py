"""Precision placement: every policy (all-CPU, all-accelerator, MLMP Min-Time and Max-Accuracy, ours, RL, the
input-dependent policy, the oracle) for three real models on two devices with low-precision accelerators,
at accuracy floors 0.5 and 1 point below all-CPU.

Everything is computed in this run: the models are trained (or fine-tuned) here, int8/fp16 ranges calibrated
on held-out data. Measured on this host: every accuracy (validation decides, test reports), by running the
units in their precisions for real (int8 by fake quantization with PyTorch's observers, fp16 by casting).
Simulated: times and energies (the cost model over the catalog's CPU and accelerator specs).
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgepool.benchmarking import metric_lines, output_folder, save_result
from edgepool.precision import experiment as ex

TASKS = ("digits-cnn", "mnist-mobilenetv2", "minilm-tweets")
DEVICES = ("rpi5-hailo-8l", "phone-snapdragon-8-gen-3", "rpi4-coral-usb")
RL_TIMESTEPS = {True: 1_000, False: 10_000}
QUICK_TASKS = ("digits-cnn",)
FIXED_POLICIES = ("mlmp min-time", "mlmp max-accuracy", "ours (lagrangian)", "rl (ppo)")


def _by(rows, floor, policy):
    return next(r for r in rows if r.policy == policy and r.floor_points in (floor, None))


def case_metrics(rows, floor: float) -> dict:
    """The issue's five figures for one task, device and floor."""
    ours, mlmp = _by(rows, floor, "ours (lagrangian)"), _by(rows, floor, "mlmp min-time")
    cpu, acc, oracle = _by(rows, floor, "all-cpu"), _by(rows, floor, "all-accelerator"), _by(rows, floor, "oracle")
    fixed = [r for r in rows if r.floor_points == floor and r.policy in FIXED_POLICIES]
    best = min(fixed, key=lambda r: r.time_ms)
    routed = _by(rows, floor, "input-dependent")
    return {
        "time_ratio_vs_mlmp_min_time": ours.time_ms / mlmp.time_ms,
        "accuracy_gain_points_vs_all_accelerator": 100 * (ours.test_accuracy - acc.test_accuracy),
        "all_accelerator_loss_points": 100 * (cpu.test_accuracy - acc.test_accuracy),
        "fraction_of_oracle": oracle.time_ms / best.time_ms,
        "best_policy": best.policy,
        "energy_ratio_vs_all_cpu": ours.energy_mj / cpu.energy_mj,
        "input_dependent_gain": 1 - routed.time_ms / best.time_ms,
        "input_dependent_test_loss_points": 100 * (cpu.test_accuracy - routed.test_accuracy),
        "ours_test_loss_points": 100 * (cpu.test_accuracy - ours.test_accuracy),
        "ours_ms": ours.time_ms, "mlmp_min_time_ms": mlmp.time_ms, "oracle_ms": oracle.time_ms,
        "all_cpu_ms": cpu.time_ms, "all_accelerator_ms": acc.time_ms,
    }


def _geomean(values):
    values = [v for v in values if v is not None and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def summarize(cases: list[dict]) -> dict:
    """One figure per metric over every case (named in the result's `aggregation`)."""
    hard = [c for c in cases if c["all_accelerator_loss_points"] >= 2]
    return {
        "time_ratio_vs_mlmp_min_time": _geomean([c["time_ratio_vs_mlmp_min_time"] for c in cases]),
        "accuracy_gain_points_vs_all_accelerator": (statistics.fmean(
            c["accuracy_gain_points_vs_all_accelerator"] for c in hard) if hard else None),
        "fraction_of_oracle": min(c["fraction_of_oracle"] for c in cases),
        "energy_ratio_vs_all_cpu": _geomean([c["energy_ratio_vs_all_cpu"] for c in cases]),
        "input_dependent_gain": statistics.fmean(c["input_dependent_gain"] for c in cases),
    }


AGGREGATION = {
    "time_ratio_vs_mlmp_min_time": "geometric mean over task x device x floor (ours / MLMP Min-Time, simulated time)",
    "accuracy_gain_points_vs_all_accelerator": "mean over the cases where all-accelerator loses >= 2 points on test "
                                               "(ours - all-accelerator, test accuracy, points); null if none",
    "fraction_of_oracle": "worst case of oracle time / best policy's time (1 = the best policy is as fast)",
    "energy_ratio_vs_all_cpu": "geometric mean over the cases of ours / all-CPU (simulated energy per input); "
                               "the worst case is in `spread`",
    "input_dependent_gain": "mean of 1 - input-dependent time / best fixed placement's time, at the same floor",
}


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.cli.progress import StageBar

    started = time.perf_counter()
    out = output_folder("precision")
    cache = Path(os.environ.get("EDGEPOOL_PRECISION_CACHE") or tempfile.mkdtemp(prefix="edgepool-precision-"))
    cases, details = [], {"tasks": {}}
    with StageBar(not progress) as bar:
        for task in QUICK_TASKS if quick else TASKS:
            devices = [ex.resolve_device(name) for name in DEVICES]
            bench = ex.open_workbench(task, ex.low_precisions(devices), cache_dir=cache, progress=bar)
            task_details = {"source": bench.task.source, "units": bench.task.unit_names,
                            "all_cpu_validation_accuracy": bench.reference_accuracy(),
                            "all_cpu_test_accuracy": bench.reference_accuracy("test"),
                            "sensitivity": bench.sensitivity.to_dict(), "fp32_time_measured_on": bench.measured_on,
                            "measured_fp32_ms_here": [None if u.measured_cpu_s is None else u.measured_cpu_s * 1e3
                                                      for u in bench.units], "devices": {}}
            for device in devices:
                name = device.name
                rows = ex.evaluate_device(bench, device, ex.FLOORS, rl_timesteps=RL_TIMESTEPS[quick], progress=bar)
                plot = ex.draw_pareto_time_accuracy(rows, out / f"precision-{task}-{name}.png",
                                                    f"{task} on {name}: test accuracy (measured) vs time (simulated)")
                per_floor = {}
                for floor in ex.FLOORS:
                    case = {"task": task, "device": name, "floor_points": floor, **case_metrics(rows, floor)}
                    cases.append(case)
                    per_floor[str(floor)] = case
                task_details["devices"][name] = {"rows": [r.to_dict() for r in rows], "cases": per_floor,
                                                 "plot": str(plot)}
            details["tasks"][task] = task_details
    spread = {key: [min(c[key] for c in cases), max(c[key] for c in cases)] for key in
              ("time_ratio_vs_mlmp_min_time", "accuracy_gain_points_vs_all_accelerator", "fraction_of_oracle",
               "energy_ratio_vs_all_cpu", "input_dependent_gain", "all_accelerator_loss_points")}
    result = {"benchmark": "precision", "quick": quick, "metrics": summarize(cases), "aggregation": AGGREGATION,
              "spread": spread,
              "cases": cases, "details": details,
              "simulated": ["time", "energy (cost model over the catalog's CPU and accelerator specs)"],
              "measured": ["accuracy (validation for the floors, test for the report), on this host"],
              "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, torch "
                         f"{torch.__version__})", "seconds": time.perf_counter() - started,
              "command": "edgepool bench precision" + (" --quick" if quick else "") + " --json"}
    save_result(result, out)
    return result


def render(result: dict) -> str:
    lines = [f"precision placement ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s)"]
    lines += metric_lines(result["metrics"], 42)
    lines.append("  per case: task / device / floor -> ours ms, MLMP ms, oracle ms, gain vs all-acc (pt)")
    for c in result["cases"]:
        lines.append(f"  {c['task'][:18]:18s} {c['device'][:14]:14s} -{c['floor_points']:<4g} "
                     f"{c['ours_ms']:8.3f} {c['mlmp_min_time_ms']:8.3f} {c['oracle_ms']:8.3f} "
                     f"{c['accuracy_gain_points_vs_all_accelerator']:+6.2f}")
    return "\n".join(lines)
