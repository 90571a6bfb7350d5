"""Scheduling many jobs over many edge nodes: SROLE, Hode, RecSLAM and MoE², each against its baselines.

Each scenario trains what it learns on some seeds and is evaluated, with its baselines, on seeds it was not
trained on, in this run (`edgepool.scheduling.<scenario>.evaluate`). The environments are simulations over the
cluster and cost model, so their latencies and completion times are simulated; what is measured (MoE²'s expert
quality with real models, Hode's real CNN accuracy and its real-process stage, RecSLAM's real scan fusion) each
scenario lists under `measured`.
"""
from __future__ import annotations

import time

from edgepool.benchmarking import goals_met, metric_lines, output_folder, run_facts, save_result

# The goals: metric -> (at most | at least, value). Reported beside the figures, never used to tune.
GOALS = {
    "srole_jct_ratio_vs_greedy": ("at most", 0.8),
    "srole_jct_ratio_vs_random": ("at most", 0.5),
    "srole_collision_ratio_vs_unshielded": ("at most", 0.5),
    "srole_unsafe_actions_executed": ("at most", 0),
    "hode_latency_ratio_vs_even_split": ("at most", 0.7),
    "hode_latency_ratio_vs_proportional_split": ("at most", 0.95),
    "hode_accuracy_loss_points": ("at most", 1.0),
    "recslam_latency_ratio_vs_nearest": ("at most", 0.8),
    "moe2_fraction_of_optimum": ("at least", 0.99),
    "moe2_search_speedup_vs_exhaustive": ("at least", 10.0),
}


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.cli.progress import StageBar
    from edgepool.scheduling.scenarios import SCENARIOS, scenario_module

    started = time.perf_counter()
    out = output_folder("scheduling")
    scenarios: dict[str, dict] = {}
    with StageBar(not progress) as bar:
        for name in SCENARIOS:
            bar(f"scenario {name}")
            scenarios[name] = scenario_module(name).evaluate(out / name, quick=quick, seed=0, progress=bar)
    metrics = {key: value for report in scenarios.values() for key, value in report["metrics"].items()}
    result = {"benchmark": "scheduling", "quick": quick, "metrics": metrics,
              "goals": {name: f"{sense} {bound}" for name, (sense, bound) in GOALS.items()},
              "goals_met": goals_met(metrics, GOALS), "scenarios": scenarios,
              "plots": {f"{name}-{label}": path for name, report in scenarios.items()
                        for label, path in report.get("plots", {}).items()},
              "simulated": {name: report.get("simulated", []) for name, report in scenarios.items()},
              "measured": {name: report.get("measured", []) for name, report in scenarios.items()},
              **run_facts("scheduling", quick, started)}
    save_result(result, out)
    return result


def render(result: dict) -> str:
    lines = [f"scheduling over edge nodes ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s, "
             f"{result['machine']})"]
    lines += metric_lines(result["metrics"], 46)
    missed = [name for name, met in result["goals_met"].items() if met is False]
    lines.append("  goals missed: " + (", ".join(missed) if missed else "none"))
    return "\n".join(lines)
