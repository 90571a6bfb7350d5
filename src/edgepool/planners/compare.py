"""Every planner on one problem, side by side: each plan replayed in the simulator.

It lives with the planners, not in the simulator, so that dependencies point one way (simulator -> planners).
"""
from __future__ import annotations

import time

from edgepool.planners.base import get_planner, planner_names
from edgepool.simulator import simulate


def compare_planners(profile, cluster, cost_model, batch: int, planners: list[str] | None = None) -> list[dict]:
    """Every planner on one problem: its plan, the simulator's replay, and the figures side by side
    (throughput, speed-up over `dp`, memory headroom, feasible or why not, planning CPU time)."""
    rows = []
    names = planners or planner_names()
    for name in names:
        start = time.process_time()
        plan = get_planner(name).plan(profile, cluster, cost_model, batch)
        seconds = time.process_time() - start
        report = simulate(plan, cluster, cost_model, profile)
        rows.append({"planner": name, "feasible": report.feasible, "why_not": report.infeasible_reason,
                     "throughput": report.throughput, "predicted_throughput": plan.predicted.get("throughput"),
                     "iteration_time_s": report.iteration_time_s,
                     "memory_headroom": report.metrics.get("memory_headroom"),
                     "stages": [len(p.stages) for p in plan.pipelines], "devices_used": len(plan.devices),
                     "microbatches": plan.microbatches, "plan_cpu_s": seconds, "plan": plan})
    dp = next((r["throughput"] for r in rows if r["planner"] == "dp" and r["throughput"]), None)
    for r in rows:
        r["speedup_over_dp"] = (r["throughput"] / dp) if dp and r["throughput"] else None
    return rows
