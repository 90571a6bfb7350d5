"""GNNs at the edge: Fograph's distributed inference over fog nodes against cloud serving and plain fog
deployment, and the vertex layout by graph cuts against its baselines and the exact optimum.

Part 1 (measured on the testbed): a 2-layer GCN trained here on a generated 20,000-vertex sensor graph, run
over examples/clusters/fog-graph.yaml (four unlike fog nodes sharing one host core by their speed, a LAN of
100 Mbit/s, the cloud on one host core behind 10 Mbit/s links), one process per node exchanging halo features
over torch.distributed. Fograph is the planner's pick of codec (none or degree-aware); both run. Latency: one
inference over the whole graph, barrier to barrier; throughput: frames streamed back to back. Compression
error is measured in process against the uncompressed output.
Part 2 (modelled cost, measured solve times): the graph-cut layout of a 10,000-vertex sensor graph over 200
devices, 9 edge servers and the cloud (each vertex: its device, any edge server, the cloud), against
all-cloud, nearest tier, METIS, random and greedy, the exact integer program (HiGHS) on small graphs, and the
incremental update against recomputing.
Without root (no testbed) part 1 runs on plain local processes and says so in `where`.
"""
from __future__ import annotations

import time

from edgepool.benchmarking import metric_lines, output_folder, run_facts, save_result

CLUSTER = "fog-graph"


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.cli.progress import StageBar
    from edgepool.cluster import example_cluster_path, load_cluster
    from edgepool.graph.experiment import InferSetup, infer_metrics, run_infer
    from edgepool.graph.layout import compare_layouts
    from edgepool.testbed.system import TestbedUnavailable, require_testbed

    started = time.perf_counter()
    out = output_folder("graph")
    try:
        require_testbed()
        launcher, fallback = "testbed", None
    except TestbedUnavailable as exc:
        launcher, fallback = "local", str(exc)
    setup = InferSetup(vertices=4_000 if quick else 20_000, epochs=30 if quick else 100,
                       latency_frames=3 if quick else 10, throughput_frames=3 if quick else 10, launcher=launcher)
    with StageBar(not progress) as bar:
        infer = run_infer(load_cluster(example_cluster_path(CLUSTER)), setup, progress=bar,
                          plot_path=out / "graph-fograph.png")
        bar("graph-cut layouts")
        layouts = compare_layouts(n=2_000 if quick else 10_000, small_graphs=3 if quick else 10,
                                  updates=5 if quick else 20, plot_path=out / "graph-layout.png")
    metrics = {**infer_metrics(infer), **layouts["metrics"]}
    result = {"benchmark": "graph", "quick": quick, "metrics": metrics, "fograph": infer, "layout": layouts,
              "plots": {"fograph": infer["plot"], "layout": layouts["plot"]},
              "measured": [f"Fograph, plain fog and cloud latency, throughput and bytes ({infer['kind']})",
                           "compression error and agreement (in process, same plan and codec as the run)",
                           "layout solve times (graph cuts, incremental, HiGHS)"],
              "modelled": ["layout costs: US$ per inference from the layout cost model's public prices"],
              "testbed_fallback": fallback,
              **run_facts("graph", quick, started)}
    save_result(result, out)
    return result


def render(result: dict) -> str:
    lines = [f"graphs at the edge ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s, "
             f"{result['machine']})"]
    lines += metric_lines(result["metrics"], 46)
    return "\n".join(lines)
