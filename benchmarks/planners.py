"""Planner benchmark: hybrid (Asteroid-style) against dp, dp-proportional, gpipe and pipedream.

Scenarios in the style of Asteroid's evaluation: 4 and 6 Jetson-class devices of mixed kinds on 100 Mbps
and 1 Gbps links, training VGG-16, ResNet-50, MobileNetV2 and BERT-base, plus the 64-device example site.
Every throughput is the simulator's replay of each planner's plan with the same roofline cost model in the
same run (simulated, not measured). Planning time is the planner's CPU time (time.process_time: the
planner is single-threaded, and the CPU time does not count waiting for the other jobs of a shared
machine) for synthetic clusters of 8, 64 and 256 devices and a 100-layer model; wall time is reported too.
"""
from __future__ import annotations

import copy
import platform
import time

BASELINES = ("dp", "dp-proportional", "gpipe", "pipedream")
MIXED4 = ("jetson-orin-nx", "jetson-orin-nano", "jetson-xavier-nx", "jetson-tx2")  # no AGX Orin: balanced
MIXED6 = ("jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "jetson-xavier-nx", "jetson-tx2",
          "jetson-nano")
MODELS = ("vgg16", "resnet50", "mobilenet_v2", "bert-base")
LINKS = {"100Mbps": 100e6 / 8, "1Gbps": 1e9 / 8}
BATCH = 32


def _mixed_cluster(kinds, bandwidth, name):
    from edgepool.catalog import get_device
    from edgepool.cluster import Cluster
    devices = [get_device(k).model_copy(update={"name": f"{k}-{i}"}) for i, k in enumerate(kinds)]
    return Cluster.uniform(devices, bandwidth=bandwidth, latency_s=0.5e-3, name=name)


def _synthetic_cluster(n: int):
    """n devices cycling through the Jetson catalog entries, on one gigabit switch."""
    from edgepool.catalog import get_device
    from edgepool.cluster import Cluster
    devices = [get_device(MIXED6[i % len(MIXED6)]).model_copy(update={"name": f"dev{i}"}) for i in range(n)]
    return Cluster.uniform(devices, bandwidth=1e9 / 8, latency_s=0.1e-3, name=f"synthetic{n}")


def _profile(cache: dict, model: str):
    if model not in cache:
        from edgepool.models import build_model
        from edgepool.profile import profile_model
        cache[model] = profile_model(build_model(model, meta=True), batch=1)
    return cache[model]


def _hundred_layers(cache: dict):
    """BERT-base's embedding, 98 copies of its encoder layer and its head: a 100-layer model."""
    from edgepool.profile import ModelProfile
    bert = _profile(cache, "bert-base")
    layers = [bert.layers[0]] + [copy.copy(bert.layers[1]) for _ in range(98)] + [bert.layers[-1]]
    return ModelProfile(model="bert-base-100-layers", batch=1, seq=bert.seq, layers=layers)


def _scenario(name, profile, cluster, cost_model, batch, link):
    from edgepool.planners.compare import compare_planners
    rows = compare_planners(profile, cluster, cost_model, batch, ["hybrid", "dmp", *BASELINES])
    res = {r["planner"]: {"throughput": r["throughput"], "predicted": r["predicted_throughput"],
                          "feasible": r["feasible"], "why_not": r["why_not"], "stages": r["stages"],
                          "devices_used": r["devices_used"], "microbatches": r["microbatches"],
                          "plan_cpu_s": round(r["plan_cpu_s"], 4)} for r in rows}
    row = {"scenario": name, "model": profile.model, "cluster": cluster.name, "devices": len(cluster),
           "link": link, "batch": batch, "planners": res}
    hybrid = res["hybrid"]["throughput"] or 0.0
    feasible = {b: res[b]["throughput"] for b in BASELINES if res[b]["feasible"] and res[b]["throughput"]}
    row["best_baseline"] = max(feasible, key=feasible.get) if feasible else None
    row["ratio_over"] = {b: (hybrid / t) for b, t in feasible.items()}
    row["ratio_over_best_baseline"] = hybrid / max(feasible.values()) if feasible else None
    if res["hybrid"]["predicted"] and hybrid:
        row["hybrid_prediction_error"] = abs(res["hybrid"]["predicted"] - hybrid) / hybrid
    return row


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.cluster import load_cluster
    from edgepool.costmodel import CostModel
    from edgepool.planners import get_planner

    cost_model = CostModel()
    profiles: dict = {}
    jobs = []
    groups = (("mixed4", MIXED4),) if quick else (("mixed4", MIXED4), ("mixed6", MIXED6))
    models = ("resnet50", "mobilenet_v2") if quick else MODELS
    for cname, kinds in groups:
        for link, bw in LINKS.items():
            for model in models:
                jobs.append(("scenario", f"{cname}/{link}/{model}", model, (kinds, bw, cname), link))
    jobs.append(("scenario", "site64/resnet50", "resnet50", "site64", "1Gbps rooms, 100Mbps backbone"))
    sizes = (8, 64) if quick else (8, 64, 256)
    for n in sizes:
        jobs.append(("timing", f"plan {n} devices x 100 layers", None, n, None))

    scenarios, timings = [], {}
    bar = None
    if progress:
        from rich.progress import Progress
        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("planner benchmark", total=len(jobs))
    try:
        for kind, label, model, spec, link in jobs:
            if bar:
                bar.update(task, description=label)
            if kind == "scenario":
                if spec == "site64":
                    cluster = load_cluster("site64")
                else:
                    kinds, bw, cname = spec
                    cluster = _mixed_cluster(kinds, bw, f"{cname}-{link}")
                scenarios.append(_scenario(label, _profile(profiles, model), cluster, cost_model, BATCH if
                                           spec != "site64" else 64, link))
            else:
                prof = _hundred_layers(profiles)
                cluster = _synthetic_cluster(spec)
                wall, cpu = time.perf_counter(), time.process_time()
                plan = get_planner("hybrid").plan(prof, cluster, cost_model, 64)
                timings[spec] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                                 "layers": len(prof), "stages": len(plan.stages), "devices_used": len(plan.devices),
                                 "predicted_throughput": plan.predicted.get("throughput")}
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()

    ratios = [s["ratio_over_best_baseline"] for s in scenarios if s["ratio_over_best_baseline"] is not None]
    dp_100 = [s["ratio_over"].get("dp") for s in scenarios if s["link"] == "100Mbps" and s["ratio_over"].get("dp")]
    errors = [s["hybrid_prediction_error"] for s in scenarios if "hybrid_prediction_error" in s]
    metrics = {
        "min_ratio_hybrid_over_best_baseline": min(ratios) if ratios else None,
        "min_ratio_hybrid_over_dp_100mbps": min(dp_100) if dp_100 else None,
        "plan_seconds_64_devices": timings.get(64, {}).get("cpu_s"),
        "plan_wall_seconds_64_devices": timings.get(64, {}).get("wall_s"),
        "plan_seconds_8_devices": timings.get(8, {}).get("cpu_s"),
        "plan_seconds_256_devices": timings.get(256, {}).get("cpu_s"),
        "geomean_ratio_hybrid_over_best_baseline": (
            __import__("math").prod(ratios) ** (1 / len(ratios)) if ratios else None),
        "max_hybrid_prediction_error": max(errors) if errors else None,
        "scenarios": len(scenarios),
    }
    return {"benchmark": "planners", "metrics": metrics, "source": "simulated (roofline cost model)",
            "scenarios": scenarios, "planning_time": {str(k): v for k, v in timings.items()}, "quick": quick,
            "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}); shared with "
                       "other jobs: planning time is CPU time",
            "command": "edgepool bench planners --json" + (" --quick" if quick else "")}


def render(result: dict) -> str:
    lines = [f"planner benchmark ({result['source']}); throughput in samples/s, simulated", ""]
    header = f"{'scenario':34} {'hybrid':>9} {'dmp':>9} " + " ".join(f"{b:>15}" for b in BASELINES) + "  hybrid/best"
    lines.append(header)
    for s in result["scenarios"]:
        p = s["planners"]
        cell = lambda name: f"{p[name]['throughput']:.2f}" if p[name]["throughput"] else "infeasible"
        ratio = s["ratio_over_best_baseline"]
        lines.append(f"{s['scenario']:34} {cell('hybrid'):>9} {cell('dmp'):>9} "
                     + " ".join(f"{cell(b):>15}" for b in BASELINES)
                     + (f"  {ratio:.2f}x" if ratio else "  -"))
    lines.append("")
    for n, t in result["planning_time"].items():
        lines.append(f"hybrid planning, {n} devices x {t['layers']} layers: {t['cpu_s']:.2f} s CPU "
                     f"({t['wall_s']:.2f} s wall)")
    lines.append("")
    lines += [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result["metrics"].items()]
    lines.append(f"machine: {result['machine']}")
    return "\n".join(lines)
