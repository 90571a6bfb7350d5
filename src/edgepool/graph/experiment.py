"""Fograph against cloud serving and plain fog deployment, end to end: the one routine `edgepool graph infer`
and `edgepool bench graph` share, and its picture.

Train the GNN on the graph (in this process), plan (`measure_costs` + `fog_plans`), run every plan on the same
node processes (`run_fog`), and report per plan latency, throughput, bytes and exactness, plus the
compression error measured in process for every codec.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.graph.compression import MODES, Codec, compression_ratio
from edgepool.graph.data import load_graph
from edgepool.graph.fog import fog_plans, fog_setup, measure_costs, run_fog, with_codec
from edgepool.graph.halo import partitioned_forward
from edgepool.graph.models import train_gnn
from edgepool.graph.partition import plan_fograph


@dataclass
class InferSetup:
    graph: str = "sensor"
    vertices: int = 20_000
    model: str = "gcn"
    hidden: int = 64
    layers: int = 2
    epochs: int = 100
    compression: str = "degree"  # a second Fograph run with these exchanges; "none": no second run
    fog_cores: float = 1.0
    cloud_cores: float = 1.0
    latency_frames: int = 10
    throughput_frames: int = 10
    warmup: int = 2
    launcher: str = "testbed"
    seed: int = 0


def compression_errors(task, trained, plan, degrees) -> dict[str, dict]:
    """Every codec on Fograph's plan, in process: output error and class agreement against no compression."""
    reference = trained.predict(task.x)
    out = {}
    for mode in MODES:
        codec = Codec.for_graph(mode, degrees)
        result = partitioned_forward(trained.model, task.x, trained.edge_index, trained.edge_weight, plan, codec,
                                     degrees)
        out[mode] = {"max_abs_error": float((result - reference).abs().max()),
                     "max_abs_logit": float(reference.abs().max()),
                     "agreement": float((result.argmax(1) == reference.argmax(1)).float().mean()),
                     "bytes_ratio": compression_ratio(codec, degrees, task.x.shape[1])}
    return out


def run_infer(cluster, setup: InferSetup, progress: Callable[[str], None] | None = None,
              work_dir: str | Path | None = None, plot_path: str | Path | None = None) -> dict:
    """The whole comparison on `cluster` (fog nodes with locations, and a device named "cloud"); with
    `plot_path`, `draw_infer`'s picture there (its path in the report's "plot")."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    task = load_graph(setup.graph, setup.vertices, seed=setup.seed)
    say(f"training {setup.model} on {task.num_nodes} vertices")
    trained = train_gnn(task, setup.model, setup.hidden, setup.layers, setup.epochs, seed=setup.seed)
    fog = fog_setup(cluster, fog_cores=setup.fog_cores, cloud_cores=setup.cloud_cores)
    degrees = task.degrees()
    # Fograph's planner weighs each codec's bytes against its coding work; both plans run, its pick is "fograph"
    plain = measure_costs(task, trained, fog)
    plans = fog_plans(task, fog, plain, seed=setup.seed)
    planned = {"none": (plans["fograph"], Codec(), plain)}
    if setup.compression != "none":
        codec = Codec.for_graph(setup.compression, degrees)
        costs = with_codec(plain, task, codec)
        planned[codec.mode] = (plan_fograph(task.edge_index, plans["fograph"].home, fog.nodes,
                                            plans["fograph"].speeds, costs, seed=setup.seed), codec, costs)
    choice = min(planned, key=lambda m: planned[m][0].estimate_s)
    runs = [(f"fograph-{mode}", plan, codec) for mode, (plan, codec, _) in planned.items()]
    runs += [("even-fog", plans["even-fog"], Codec()), ("cloud", plans["cloud"], Codec())]
    say("compression error in process")
    errors = compression_errors(task, trained, planned[setup.compression][0], degrees)
    say(f"running {len(runs)} plans on {len(fog.nodes)} node processes ({setup.launcher})")
    measured = run_fog(task, trained, fog, runs, latency_frames=setup.latency_frames,
                       throughput_frames=setup.throughput_frames, warmup=setup.warmup, launcher=setup.launcher,
                       work_dir=work_dir)
    report = {"setup": asdict(setup), "graph": task.describe(), "model": {
                  "kind": setup.model, "hidden": setup.hidden, "layers": setup.layers,
                  "test_accuracy": trained.test_accuracy, "train_s": trained.train_seconds},
              "costs": {mode: asdict(costs) for mode, (_, _, costs) in planned.items()}, "fograph_choice": choice,
              "runs": {k: r.to_dict() for k, r in measured.runs.items()},
              "compression": errors, "where": measured.where, "wall_s": time.perf_counter() - started,
              "kind": f"measured on the {measured.where.get('launcher', setup.launcher)} launcher"}
    if plot_path is not None:
        report["plot"] = str(draw_infer(report, task.pos, planned[choice][0].owner, plot_path))
    return report


def infer_metrics(report: dict) -> dict:
    """The benchmark's figures from one `run_infer` report: Fograph is the planner's pick of codec; the
    figures of each codec's run follow as `fograph_<codec>_*`."""
    runs = report["runs"]
    cloud, even = runs["cloud"], runs["even-fog"]
    codec = report["setup"]["compression"]
    fograph = runs[f"fograph-{report['fograph_choice']}"]
    metrics = {
        "fograph_speedup_vs_cloud": cloud["latency_mean_s"] / fograph["latency_mean_s"],
        "fograph_throughput_ratio_vs_even_fog": fograph["throughput_fps"] / even["throughput_fps"],
        "fograph_speedup_vs_even_fog": even["latency_mean_s"] / fograph["latency_mean_s"],
        "compression_max_abs_error": report["compression"][codec]["max_abs_error"],
        "compression_accuracy_agreement": report["compression"][codec]["agreement"],
        "distributed_equals_single_process": float(all(r["max_abs_error"] == 0.0 for r in runs.values()
                                                       if r["codec"] == "none")),
    }
    for name, run in runs.items():
        if name.startswith("fograph-"):
            mode = name.split("-", 1)[1]
            metrics[f"fograph_{mode}_speedup_vs_cloud"] = cloud["latency_mean_s"] / run["latency_mean_s"]
            metrics[f"fograph_{mode}_throughput_ratio_vs_even_fog"] = run["throughput_fps"] / even["throughput_fps"]
    return metrics


def draw_infer(report: dict, task_positions: np.ndarray | None, owner: np.ndarray | None, path: str | Path) -> Path:
    """Left: which fog node owns each vertex (Fograph's plan); right: latency per plan split into its phases
    (the slowest node's raw exchange, compute, halo exchanges)."""
    from edgepool.plotting import save_figure, plt

    panels = 2 if task_positions is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8), squeeze=False, layout="constrained")
    if task_positions is not None:
        ax = axes[0][0]
        nodes = report["runs"][f"fograph-{report['fograph_choice']}"]["plan"]["nodes"]
        cmap = plt.get_cmap("tab10")
        for j, name in enumerate(nodes):
            sel = owner == j
            if sel.any():
                ax.scatter(task_positions[sel, 0], task_positions[sel, 1], s=2, color=cmap(j),
                           label=f"{name} ({int(sel.sum())})")
        ax.set_aspect("equal")
        ax.set_title(f"Fograph's plan ({report['fograph_choice']}): owner of each vertex", fontsize=9)
        ax.legend(fontsize=7, markerscale=4, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=3, frameon=False)
    bx = axes[0][-1]
    names = list(report["runs"])
    means = [report["runs"][n]["latency_mean_s"] for n in names]
    bx.bar(names, means, color=["#4C72B0" if n.startswith("fograph") else "#8C8C8C" for n in names])
    for i, m in enumerate(means):
        bx.text(i, m, f"{m * 1000:.0f} ms", ha="center", va="bottom", fontsize=8)
    bx.set_ylabel("latency of one inference over the graph (s, measured)")
    bx.set_title(f"{report['graph']['vertices']} vertices, {report['model']['kind']} "
                 f"({report['where'].get('launcher', '')})", fontsize=9)
    bx.tick_params(axis="x", labelsize=8)
    return save_figure(fig, path)

