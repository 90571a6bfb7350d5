"""Every planner on one problem, side by side: each plan replayed in the simulator.

It lives with the planners, not in the simulator, so that dependencies point one way (simulator -> planners).
"""
from __future__ import annotations

import time

from edgepool.planners.base import get_planner, planner_names
from edgepool.simulator import simulate

# The kind of parallelism each planner's plans use (tensor parallelism is an inference plan: `edgepool infer`).
PARALLELISM = {"dp": "data", "dp-proportional": "data", "gpipe": "pipeline", "pipedream": "pipeline",
               "hybrid": "hybrid", "dmp": "hybrid"}


def compare_planners(profile, cluster, cost_model, batch: int, planners: list[str] | None = None,
                     objective: str = "throughput", constraints: dict | None = None) -> list[dict]:
    """Every planner on one problem: its plan, the simulator's replay, and the figures side by side
    (throughput, speed-up over `dp`, memory headroom, energy per sample and its breakdown, feasible or why
    not, planning CPU time). With `objective="energy"` or an energy/power budget in `constraints`, each row
    also lists every candidate the planner's energy search replayed (`candidates`)."""
    rows = []
    names = planners or planner_names()
    for name in names:
        planner = get_planner(name)
        start = time.process_time()
        plan = planner.plan(profile, cluster, cost_model, batch, objective, constraints)
        seconds = time.process_time() - start
        report = simulate(plan, cluster, cost_model, profile)
        m = report.metrics
        search = planner.last_search
        rows.append({"planner": name, "parallelism": PARALLELISM.get(name, "other"), "feasible": report.feasible,
                     "why_not": report.infeasible_reason, "throughput": report.throughput,
                     "predicted_throughput": plan.predicted.get("throughput"),
                     "iteration_time_s": report.iteration_time_s, "memory_headroom": m.get("memory_headroom"),
                     "energy_per_sample_j": m["energy_j_per_sample"], "power_w": m["average_power_w"],
                     "energy_breakdown_j_per_sample": m["energy_breakdown_j_per_sample"],
                     "device_energy_j_per_sample": {d: {k: v / batch for k, v in s.energy_breakdown_j.items()}
                                                    for d, s in report.per_device.items()},
                     "power_modes": plan.power_modes, "stages": [len(p.stages) for p in plan.pipelines],
                     "devices_used": len(plan.devices), "microbatches": plan.microbatches, "plan_cpu_s": seconds,
                     "candidates": [c.summary() for c in search.candidates] if search else [], "plan": plan})
    dp = next((r["throughput"] for r in rows if r["planner"] == "dp" and r["throughput"]), None)
    for r in rows:
        r["speedup_over_dp"] = (r["throughput"] / dp) if dp and r["throughput"] else None
    return rows


def pareto_points(rows: list[dict]) -> tuple[dict[str, list[tuple[float, float]]], dict[str, tuple[float, float]]]:
    """From `compare_planners` rows: per planner, the (throughput, J/sample) of every candidate its energy
    search replayed (or of its plan, when there was no search), and of the plan it chose."""
    points = {r["planner"]: [(c["throughput"], c["energy_per_sample_j"]) for c in r["candidates"]
                             if c["throughput"]] or ([(r["throughput"], r["energy_per_sample_j"])]
                                                     if r["throughput"] else []) for r in rows}
    chosen = {r["planner"]: (r["throughput"], r["energy_per_sample_j"]) for r in rows if r["throughput"]}
    return points, chosen
