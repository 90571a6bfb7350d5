"""Adapting models on the device: sparse fine-tuning (PockEngine) and cloud-edge adaptation (CEMA).

Part 1, sparse fine-tuning (`edgepool.finetune.sparse_compare`): on MiniLM and the real tweets, a contribution
analysis picks what to update under a memory budget; the selection trains with a pruned backward graph, against
full fine-tuning, LoRA (peft) and PAC on the same data, batches and epochs; a compiled training step against
the eager one; and the same on SmolLM2-135M (a decoder). Part 2, cloud-edge adaptation
(`edgepool.adapt.compare`): a forward-only edge CNN on a stream of real MNIST digits under MNIST-C-style shifts,
CEMA against no adaptation, uploading everything, random uploads at CEMA's rate and on-edge EATA. Part 3: CEMA
again with the edge and the cloud in two processes joined by a shaped link of the emulated testbed (a local
pair of processes without root), with the link down for a stretch of the stream.

Everything is measured in this run on this machine: accuracies, bytes, memory (autograd's saved tensors,
gradients and optimizer state), step times.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from edgepool.benchmarking import metric_lines, output_folder, run_facts, save_result

LINK_BPS = 10e6  # the edge-cloud link of part 3
OUTAGE = (20, 35)  # batches of part 3's stream with the link down
BATCH_INTERVAL_S = 0.05  # part 3: a batch of 64 digits arrives every this many seconds


def _say(progress: bool):
    from edgepool.cli.progress import StageBar

    return StageBar(not progress)


def _over_link(cema: dict, cache: Path, quick: bool, bar) -> dict:
    """CEMA with the edge and the cloud in two processes (testbed if root), the link down for a while."""
    from edgepool.adapt.compare import benchmark_stream
    from edgepool.adapt.distributed import run_over_link

    dataset, phases = benchmark_stream(quick)  # the stream compare_methods ran on
    result = run_over_link("cema", phases, dataset=dataset, cache_dir=cache,
                           batch=cema["setup"]["batch"], bandwidth_bps=LINK_BPS, launcher="testbed",
                           outages=[] if quick else [OUTAGE], batch_interval_s=0.0 if quick else BATCH_INTERVAL_S,
                           reply_timeout_s=1.0, progress=bar)
    in_process = cema["methods"]["cema"]["mean_accuracy_over_shifts"]
    return {**result.summary(), "accuracy_in_process": in_process,
            "accuracy_gap_vs_in_process_points": round(100 * (in_process - result.run.mean_accuracy), 2)}


def _draw_sparse(sparse: dict, path: Path) -> str:
    from edgepool.plotting import draw_pareto

    points = [(m["backward_memory_bytes"] / 2**20, m["accuracy"], name) for name, m in sparse["methods"].items()
              if m.get("backward_memory_bytes") is not None and m.get("accuracy") is not None]
    if not points:
        return ""
    return str(draw_pareto(points, path, x_label="backward memory, MiB (measured)",
                           y_label="test accuracy % (measured)", points_label="methods",
                           title="MiniLM on tweets: what each method keeps for backward vs accuracy"))


def run(quick: bool = False, progress: bool = True) -> dict:
    from edgepool.adapt.compare import compare_methods
    from edgepool.finetune.sparse_compare import compare_sparse

    started = time.perf_counter()
    out = output_folder("adapt")
    cache = Path(os.environ.get("EDGEPOOL_ADAPT_CACHE") or tempfile.mkdtemp(prefix="edgepool-adapt-"))
    with _say(progress) as bar:
        sparse = compare_sparse(quick, progress=bar)
        cema = compare_methods(quick, progress=bar, cache_dir=cache, plot_path=out / "adapt-cema-stream.png")
        over_link = _over_link(cema, cache, quick, bar)
    plots = {"sparse": _draw_sparse(sparse, out / "adapt-sparse-memory-accuracy.png"),
             "cema": str(out / "adapt-cema-stream.png")}
    result = {"benchmark": "adapt", "quick": quick, "metrics": {**sparse["metrics"], **cema["metrics"]},
              "sparse": sparse, "cema": cema, "cema_over_link": over_link, "plots": plots,
              "measured": ["every figure, in this run, on this machine"],
              **run_facts("adapt", quick, started)}
    save_result(result, out)
    return result


def render(result: dict) -> str:
    lines = [f"on-device adaptation ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s, "
             f"{result['machine']})"]
    lines += metric_lines(result["metrics"], 40)
    link = result["cema_over_link"]
    lines.append(f"  CEMA over the link ({link['where'].get('launcher')}): accuracy "
                 f"{100 * link['mean_accuracy_over_shifts']:.1f}% "
                 f"(in-process {100 * link['accuracy_in_process']:.1f}%), "
                 f"{link['link']['bytes_up'] / 1e3:.0f} kB up, {link['link']['drops']} drops, "
                 f"{link['link']['reply_timeouts']} reply timeouts")
    return "\n".join(lines)
