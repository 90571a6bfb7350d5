"""Energy: the energy objective against the throughput objective, and a measured training input pipeline.

Simulated part: the Jetson-class scenarios of the planner benchmark (4 and 6 mixed Jetsons, 100 Mbps and
1 Gbps, VGG-16, ResNet-50, MobileNetV2, BERT-base, batch 32). Each Jetson carries the power work's planning
modes (`edgepool.power.planning_modes`: presets and its time-energy front for the model, with modelled draw).
Every planner plans for throughput and for energy (at >= 90 % of its own throughput plan), all in this run:

- the throughput plan is the fastest plan of any planner; the energy plan is the least energy per sample
  among every candidate any planner's energy search replayed at >= 90 % of that plan's throughput;
- `energy_per_sample_saving_vs_throughput_plan` = 1 - E(energy plan) / E(throughput plan), averaged over the
  scenarios (each scenario's figure is in `scenarios`);
- `parallelism_energy_table`: per scenario and kind of parallelism (data, pipeline, hybrid: tensor
  parallelism is an inference plan in edgepool, not a training one), the energy per sample of that kind's
  fastest plan and of its energy plan.

Measured part: `edgepool characterize`'s quick sweep on this machine (a real PNG-decoding input pipeline),
for the fetch stall of PyTorch's default DataLoader settings against the best setting measured, and the
variability of iteration times.
"""
from __future__ import annotations

import tempfile
import textwrap
import time
from pathlib import Path

from edgepool.benchmarking import goals_met, load_benchmark, metric_lines, output_folder, run_facts, save_result

FLOOR = 0.9  # the energy plan keeps at least this fraction of the best throughput
# The goals: metric -> (at most | at least, value). Reported beside the figures, never used to tune.
GOALS = {"energy_per_sample_saving_vs_throughput_plan": ("at least", 0.2)}
KINDS = ("data", "pipeline", "hybrid")


def scenario_result(name: str, rows: list[dict]) -> dict:
    """The throughput plan, the energy plan and the per-kind table of one scenario's `compare_planners` rows
    (energy objective, each planner at >= FLOOR of its own throughput plan: its first candidate)."""
    own = {r["planner"]: r["candidates"][0] for r in rows if r["candidates"] and r["candidates"][0]["throughput"]}
    fastest = max(own, key=lambda p: own[p]["throughput"])
    top = own[fastest]
    floor = FLOOR * top["throughput"]
    pool = [(r["planner"], c) for r in rows for c in r["candidates"] if c["throughput"] >= floor]
    planner, best = min(pool, key=lambda pc: pc[1]["energy_per_sample_j"])
    kinds = {}
    for kind in KINDS:
        mine = [r for r in rows if r["parallelism"] == kind and r["planner"] in own]
        if mine:
            r = max(mine, key=lambda r: own[r["planner"]]["throughput"])
            kinds[kind] = {"planner": r["planner"], "throughput_plan_j_per_sample": own[r["planner"]]
                           ["energy_per_sample_j"], "throughput_plan_samples_per_s": own[r["planner"]]["throughput"],
                           "energy_plan_j_per_sample": r["energy_per_sample_j"],
                           "energy_plan_samples_per_s": r["throughput"]}
    return {"scenario": name, "throughput_plan": {"planner": fastest, **_short(top)},
            "energy_plan": {"planner": planner, **_short(best)},
            "saving": 1 - best["energy_per_sample_j"] / top["energy_per_sample_j"],
            "throughput_kept": best["throughput"] / top["throughput"], "parallelism": kinds,
            "candidates": sum(len(r["candidates"]) for r in rows)}


def _short(c: dict) -> dict:
    return {k: c[k] for k in ("throughput", "energy_per_sample_j", "power_w", "devices", "power_modes",
                              "breakdown_j_per_sample")}


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.characterize import characterize
    from edgepool.characterize.plots import draw_iteration_times, draw_stall_compute
    from edgepool.cli.progress import StageBar
    from edgepool.costmodel import CostModel
    from edgepool.planners.compare import compare_planners, pareto_points
    from edgepool.plotting import draw_energy_pareto
    from edgepool.power.planning_modes import with_planning_modes

    started = time.perf_counter()
    planners_bench = load_benchmark("planners")
    out = output_folder("energy")
    groups = (("mixed4", planners_bench.MIXED4),) if quick else (("mixed4", planners_bench.MIXED4),
                                                                 ("mixed6", planners_bench.MIXED6))
    models = ("resnet50", "mobilenet_v2") if quick else planners_bench.MODELS
    jobs = [(g, kinds, link, bw, model) for g, kinds in groups for link, bw in planners_bench.LINKS.items()
            for model in models]
    cost_model, profiles, scenarios, plots = CostModel(), {}, [], {}
    with StageBar(not progress) as bar:
        for k, (group, kinds, link, bw, model) in enumerate(jobs):
            bar("energy objective (simulated)", k, len(jobs))
            name = f"{group}/{link}/{model}"
            profile = planners_bench._profile(profiles, model)
            cluster = with_planning_modes(planners_bench._mixed_cluster(kinds, bw, f"{group}-{link}"), profile,
                                          planners_bench.BATCH)
            rows = compare_planners(profile, cluster, cost_model, planners_bench.BATCH, objective="energy",
                                    constraints={"throughput_fraction": FLOOR})
            scenarios.append(scenario_result(name, rows))
            if model == "mobilenet_v2":  # one Pareto picture per cluster and link
                path = out / f"pareto-{group}-{link}-{model}.png"
                plots[name] = str(draw_energy_pareto(*pareto_points(rows), path, title=f"{name}, batch "
                                                     f"{planners_bench.BATCH} (simulated)"))
        bar("energy objective (simulated)", len(jobs), len(jobs))
        with tempfile.TemporaryDirectory(prefix="edgepool-energy-") as workdir:
            pipeline = characterize("quick", Path(workdir), progress=bar)
    plots["characterize-stall-compute"] = str(draw_stall_compute(
        pipeline.rows, out / "characterize-stall-compute.png", title="time per sample (measured, this machine)"))
    plots["characterize-iteration-times"] = str(draw_iteration_times(
        pipeline.rows, out / "characterize-iteration-times.png", title="iteration times (measured, this machine)"))
    savings = [s["saving"] for s in scenarios]
    metrics = {
        "energy_per_sample_saving_vs_throughput_plan": sum(savings) / len(savings),
        "energy_per_sample_saving_min": min(savings),
        "energy_per_sample_saving_max": max(savings),
        "scenarios_saving_at_least_0.2": sum(s >= 0.2 for s in savings),
        "parallelism_energy_table": {s["scenario"]: {kind: round(v["throughput_plan_j_per_sample"], 4)
                                                      for kind, v in s["parallelism"].items()} for s in scenarios},
        "fetch_stall_fraction_default": pipeline.default.stall_fraction,
        "fetch_stall_fraction_best": pipeline.best.stall_fraction,
        "iteration_time_cv": pipeline.default.iteration_time_cv,
    }
    plots["savings"] = str(_draw_savings(scenarios, out / "savings.png"))
    result = {"benchmark": "energy", "metrics": metrics, "goals": {n: f"{s} {b}" for n, (s, b) in GOALS.items()},
              "goals_met": goals_met(metrics, GOALS), "scenarios": scenarios, "characterization": pipeline.to_dict(),
              "simulated": ["energy_per_sample_saving_vs_throughput_plan", "energy_per_sample_saving_min",
                            "energy_per_sample_saving_max", "parallelism_energy_table"],
              "measured": ["fetch_stall_fraction_default", "fetch_stall_fraction_best", "iteration_time_cv"],
              "energy": "modelled: catalog idle power + the power work's DVFS model of each mode's draw while busy "
                        "+ 1 W per network interface while it moves data",
              "floor": FLOOR, "plots": plots, "quick": quick, **run_facts("energy", quick, started)}
    save_result(result, out)
    return result


def _draw_savings(scenarios: list[dict], path: Path) -> Path:
    """Energy per sample of each scenario's throughput plan and energy plan, side by side (simulated)."""
    import matplotlib.pyplot as plt

    from edgepool.plotting import save_figure
    names = [s["scenario"] for s in scenarios]
    thr = [s["throughput_plan"]["energy_per_sample_j"] for s in scenarios]
    eng = [s["energy_plan"]["energy_per_sample_j"] for s in scenarios]
    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], thr, width=0.4, label="throughput plan")
    ax.bar([i + 0.2 for i in x], eng, width=0.4, label=f"energy plan (>= {FLOOR:.0%} of its throughput)")
    for i, s in enumerate(scenarios):
        ax.annotate(f"-{s['saving']:.0%}", (i + 0.2, eng[i]), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("energy per sample (J, simulated)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def render(result: dict) -> str:
    lines = [f"energy ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s, {result['machine']})",
             f"{'scenario (simulated)':28} {'thr plan J':>10} {'energy J':>9} {'saving':>7} {'kept':>5}"]
    for s in result["scenarios"]:
        lines.append(f"{s['scenario']:28} {s['throughput_plan']['energy_per_sample_j']:10.3f} "
                     f"{s['energy_plan']['energy_per_sample_j']:9.3f} {s['saving']:7.1%} {s['throughput_kept']:5.0%}")
    scalar = {k: v for k, v in result["metrics"].items() if not isinstance(v, dict)}
    lines += metric_lines(scalar, 46)
    lines.append("  what to set (measured):")
    for line in result["characterization"].get("recommendation", []):
        lines.append(textwrap.fill(line, 80, initial_indent="  - ", subsequent_indent="    "))
    missed = [name for name, met in result["goals_met"].items() if met is False]
    lines.append("  goals missed: " + (", ".join(missed) if missed else "none"))
    return "\n".join(lines)

