"""Split computing: learned bottlenecks vs input codecs vs 8-bit features, where to split, an early filter,
and adaptive offloading, on real photographs (ImageNet MobileNetV2 as teacher) and MNIST (fine-tuned).

Everything is computed in this run. Measured: accuracies, bitstream sizes (`len(bytes)`), compute seconds on
one host thread, and end-to-end latencies on the testbed (a Pi-class CPU quota for the device, one core for
the server, a `tc htb`-shaped link at each bandwidth; needs root, else the latency metrics are null).
Simulated: the adaptive-offloading environment (its latencies are modelled from the measured table over
synthetic bandwidth traces shaped like published 3G/4G logs).
"""
from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepool.benchmarking import metric_lines, output_folder, save_result
from edgepool.split import experiment as ex
from edgepool.split.backbone import head_and_tail, predict, to_input
from edgepool.split.early_filter import evaluate_filter, train_filter
from edgepool.split.evaluate import best_at_accuracy, draw_rate_accuracy
from edgepool.split.options import INPUT_CODECS, SplitOption
from edgepool.split.planner import eligible, plan_split, reference_accuracy
from edgepool.split.training import TrainConfig, teacher_cache

BANDWIDTHS_BPS = (0.5e6, 2e6, 10e6, 50e6)
MAX_LOSS = 0.01  # "equal accuracy": within one point of the unsplit model
BOTTLENECKS = {  # task -> (method, cut, channels, beta, stride, step)
    "photos": [("entropic", 8, 64, 0.001, 1, 0.1), ("entropic", 8, 64, 0.001, 1, 0.2),
               ("bottlefit", 8, 64, 0.0, 1, 0.0), ("bottlefit", 8, 32, 0.0, 1, 0.0)],
    "mnist": [("entropic", 5, 8, 0.01, 1, 0.3), ("entropic", 5, 4, 0.01, 2, 0.3), ("entropic", 5, 2, 0.05, 2, 0.6),
              ("bottlefit", 5, 8, 0.0, 1, 0.0)],
}
# Photos keep the teacher's tail (no stage 2): on 480 training crops, fine-tuning the tail lowered the test
# crops' agreement with the teacher (98.6% -> 72% in a trial), an overfit to the few training photos.
FULL = {"photos": dict(train_per_photo=40, head_epochs=5, tail_epochs=0, train_images=None),
        "mnist": dict(head_epochs=8, tail_epochs=1, train_images=2000, finetune_epochs=1)}
QUICK = {"photos": dict(train_per_photo=3, head_epochs=1, tail_epochs=0, train_images=None, test_images=24),
         "mnist": dict(head_epochs=1, tail_epochs=1, train_images=200, finetune_epochs=1, test_images=60)}
FILTER_DIGIT = 0  # MNIST: the object of interest is a zero
A3D_TIMESTEPS = {True: 3000, False: 100_000}


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[split bench] {msg}", file=sys.stderr, flush=True)


def _train_task(task: str, folder: Path, sizes: dict, progress: bool):
    train, test = ex.load_sets(task, **({"train_per_photo": sizes["train_per_photo"]} if task == "photos" else {}))
    if sizes.get("test_images"):
        test = test.subset(sizes["test_images"])
    finetune_set = train.subset(sizes.get("train_images"))
    reference = ex.prepare(task, folder, finetune_set, test, finetune_epochs=sizes.get("finetune_epochs", 1))
    settings = ex.TaskSettings.of(task)
    train = train.subset(sizes.get("train_images"))
    inputs = to_input(train.images, settings.side)
    for cut in settings.feature_cuts:
        ex.fit_quantizer(folder, reference, inputs, cut)
    config = TrainConfig(head_epochs=sizes["head_epochs"], tail_epochs=sizes["tail_epochs"])
    caches = {}
    for method, cut, channels, beta, stride, step in BOTTLENECKS[task]:
        t = time.perf_counter()
        if cut not in caches:
            caches[cut] = teacher_cache(reference, train, settings.side, cut, inputs)
        ex.train_bottleneck(folder, reference, caches[cut], method, cut, channels, beta, stride, config,
                            step=step)
        _say(progress, f"{task}: trained {method} at cut {cut} in {time.perf_counter() - t:.0f} s")
    return reference, train, inputs


def _rate_metrics(rows) -> dict:
    """Bytes of the best bottleneck over the best input codec at equal accuracy, and its accuracy loss."""
    ref = reference_accuracy(rows)
    floor = ref - MAX_LOSS
    full = max(r.option.resolution for r in rows)
    rows = [r for r in rows if r.option.resolution == full]
    codec = best_at_accuracy(rows, floor, INPUT_CODECS)
    bottleneck = best_at_accuracy(rows, floor, ("bottlefit", "entropic"))
    level = floor
    if bottleneck is None:  # no bottleneck within a point: compare at the best bottleneck's own accuracy
        bottleneck = max((r for r in rows if r.option.method in ("bottlefit", "entropic")),
                         key=lambda r: (r.accuracy, -r.bytes_per_image))
        level = bottleneck.accuracy
        codec = best_at_accuracy(rows, level, INPUT_CODECS)
    return {"bytes_ratio": bottleneck.bytes_per_image / codec.bytes_per_image if codec else None,
            "loss_points": 100 * (ref - bottleneck.accuracy), "bottleneck": bottleneck.option.name,
            "bottleneck_bytes": bottleneck.bytes_per_image, "codec": codec.option.name if codec else None,
            "codec_bytes": codec.bytes_per_image if codec else None, "reference_accuracy": ref,
            "equal_accuracy_level": level, "within_one_point": level == floor}


def _latency_options(rows) -> list[SplitOption]:
    """What the testbed runs: local, each format's smallest option within a point (else its most accurate),
    the 8-bit features at each cut and every bottleneck (full resolution)."""
    full = max(r.option.resolution for r in rows)
    rows = [r for r in rows if r.option.resolution == full]
    floor = reference_accuracy(rows) - MAX_LOSS
    chosen = [r.option for r in rows if r.option.location != "server"]
    for fmt in INPUT_CODECS:
        mine = [r for r in rows if r.option.method == fmt]
        good = [r for r in mine if r.accuracy >= floor]
        pick = min(good, key=lambda r: r.bytes_per_image) if good else max(mine, key=lambda r: r.accuracy)
        chosen.append(pick.option)
    return chosen


def _latency(task: str, folder: Path, rows, bandwidths, quick: bool, progress: bool):
    from edgepool.split.latency import DEVICE_CORES, SERVER_CORES, measure_latency
    from edgepool.testbed.system import TestbedUnavailable

    options = _latency_options(rows)
    images = ex.load_test(folder).subset(3 if quick else 8).images
    try:
        return measure_latency("edgepool.split.pipeline:build", {"artifacts": str(folder)}, options, images,
                               list(bandwidths), device_cores=DEVICE_CORES, server_cores=SERVER_CORES,
                               warmup=1, repeats=1 if quick else 6)
    except TestbedUnavailable as exc:
        _say(progress, f"{task}: no testbed here ({exc}); latency metrics are null")
        return None


def _latency_metrics(rows, sweep, bandwidth: float) -> dict:
    """Measured: the fastest bottleneck split (within a point if any is) over the best of local and offload."""
    by_name = {r.option.name: r for r in rows}
    floor = reference_accuracy(rows) - MAX_LOSS
    measured = [by_name[n] for n in sweep.names]
    split = [r for r in measured if r.option.method in ("bottlefit", "entropic")]
    split = [r for r in split if r.accuracy >= floor] or split
    baseline = [r for r in measured if r.option.location in ("device", "server") and r.accuracy >= floor]
    best_split = min(split, key=lambda r: sweep.latency(r.option.name, bandwidth))
    best_base = min(baseline, key=lambda r: sweep.latency(r.option.name, bandwidth))
    return {"ratio": sweep.latency(best_split.option.name, bandwidth) / sweep.latency(best_base.option.name,
                                                                                       bandwidth),
            "split": best_split.option.name, "split_s": sweep.latency(best_split.option.name, bandwidth),
            "baseline": best_base.option.name, "baseline_s": sweep.latency(best_base.option.name, bandwidth)}


def _calibration(rows, sweep) -> dict:
    """How much slower the emulated device and server compute than the table's one-thread seconds, from one
    probe each on the testbed (the local option for the device, the first offload option for the server): the
    cost model's speeds, calibrated where it runs, as the inference benchmark calibrates its core rate."""
    by_name = {r.option.name: r for r in rows}
    first = sweep.bandwidths_bps[0]
    local = sweep.measure("local", first)
    offload = next(sweep.measure(n, first) for n in sweep.names if n.startswith("offload-"))
    return {"device_slowdown": statistics.fmean(local.device_s) / by_name["local"].device_s,
            "server_slowdown": statistics.fmean(offload.server_s) / by_name[offload.option].server_s,
            "probes": ["local", offload.option]}


def _planner_regret(rows, sweep) -> dict:
    """Over the sweep: the planner's pick's measured latency over the best measured option (same accuracy rule).

    The planner's speeds are calibrated by two probes (`_calibration`); its choice with the quotas' nominal
    speeds (1 / cores) is reported beside it."""
    from edgepool.split.latency import DEVICE_CORES, SERVER_CORES

    measured = [r for r in rows if r.option.name in sweep.names]
    candidates = {r.option.name for r in eligible(measured, MAX_LOSS)}
    calibration = _calibration(rows, sweep)
    per_bw = {}
    for bw in sweep.bandwidths_bps:
        choice = plan_split(measured, bw, calibration["device_slowdown"], calibration["server_slowdown"], MAX_LOSS)
        nominal = plan_split(measured, bw, 1 / DEVICE_CORES, 1 / SERVER_CORES, MAX_LOSS)
        best = sweep.best(bw, sorted(candidates))
        per_bw[f"{bw / 1e6:g}Mbps"] = {"planner": choice.name, "predicted_s": choice.predicted_latency_s,
                                        "measured_s": sweep.latency(choice.name, bw), "best": best.option,
                                        "best_s": best.mean_s,
                                        "regret": sweep.latency(choice.name, bw) / best.mean_s,
                                        "nominal_planner": nominal.name,
                                        "nominal_regret": sweep.latency(nominal.name, bw) / best.mean_s}
    return {"max": max(v["regret"] for v in per_bw.values()),
            "nominal_max": max(v["nominal_regret"] for v in per_bw.values()), "calibration": calibration,
            "per_bandwidth": per_bw}


def _filter(folder: Path, reference, train, inputs, rows) -> dict:
    """MNIST's early filter: is it a zero? On the head's features at the best bottleneck's cut."""
    test = ex.load_test(folder)
    best = min((r for r in rows if r.option.method in ("bottlefit", "entropic")),
               key=lambda r: (-(r.accuracy >= reference_accuracy(rows) - MAX_LOSS), r.bytes_per_image))
    head, _ = head_and_tail(reference, best.option.cut)
    side = ex.TaskSettings.of("mnist").side
    model = train_filter(predict(head, inputs), train.labels == FILTER_DIGIT)
    from edgepool.split.pipeline import Artifacts, pipeline

    pipe = pipeline(best.option, Artifacts(folder))
    sizes = np.asarray([len(b) for b in pipe.device_batch(test.images)], dtype=np.float64)
    result = evaluate_filter(model, predict(head, to_input(test.images, side)), test.labels == FILTER_DIGIT,
                             sizes, skipped_seconds=best.server_s, bandwidth_bps=2e6,
                             target=f"MNIST digit {FILTER_DIGIT} (before {best.option.name})")
    return result.to_dict()


def _adaptive(rows, out: Path, quick: bool, progress: bool) -> dict:
    from edgepool.split.adaptive import compare, draw_adaptive
    from edgepool.split.traces import generate_traces

    train_traces = generate_traces(4 if quick else 16, 120 if quick else 300, seed=1)
    test_traces = generate_traces(2 if quick else 8, 120 if quick else 300, seed=1001)
    result = compare(rows, train_traces, test_traces, timesteps=A3D_TIMESTEPS[quick], seed=0,
                     progress=(lambda m: _say(progress, m)))
    return {**result.to_dict(), "plot": str(draw_adaptive(result, out / "split-adaptive.png"))}


def run(quick: bool = False, progress: bool = True) -> dict:
    started = time.perf_counter()
    out = output_folder("split")
    work = Path(tempfile.mkdtemp(prefix="edgepool-split-bench-"))
    sizes = QUICK if quick else FULL
    details: dict = {"machine": "this host; compute times on one thread", "tasks": {}}
    metrics: dict = {}
    from edgepool.split.latency import draw_latency_sweep

    for task, suffix in (("photos", ""), ("mnist", "_mnist")):
        folder = work / task
        _say(progress, f"{task}: preparing data, reference and bottlenecks")
        reference, train, inputs = _train_task(task, folder, sizes[task], progress)
        rows = ex.evaluate(folder, progress=lambda name: None, timing_images=3 if quick else 10)
        _say(progress, f"{task}: rate-accuracy table of {len(rows)} options measured")
        plot = draw_rate_accuracy(rows, out / f"split-rate-accuracy{suffix}.png", f"rate-accuracy ({task})")
        rate = _rate_metrics(rows)
        bandwidths = BANDWIDTHS_BPS if task == "photos" else (2e6,)
        sweep = _latency(task, folder, rows, bandwidths, quick, progress)
        lat = _latency_metrics(rows, sweep, 2e6) if sweep else None
        metrics[f"bytes_ratio_vs_best_codec_at_equal_accuracy{suffix}"] = rate["bytes_ratio"]
        metrics[f"accuracy_loss_points_at_best_rate{suffix}"] = rate["loss_points"]
        metrics[f"latency_ratio_vs_best_of_local_offload_2mbps{suffix}"] = lat["ratio"] if lat else None
        task_details = {"rate": rate, "latency_2mbps": lat, "table": [r.to_dict() for r in rows],
                        "rate_accuracy_plot": str(plot)}
        if sweep:
            task_details["latency_sweep"] = sweep.to_dict()
            task_details["latency_plot"] = str(draw_latency_sweep(sweep, out / f"split-latency{suffix}.png"))
        if task == "photos":
            regret = _planner_regret(rows, sweep) if sweep else None
            metrics["planner_regret_max"] = regret["max"] if regret else None
            task_details["planner"] = regret
            _say(progress, "photos: adaptive offloading (PPO vs heuristic vs fixed, simulated over traces)")
            adaptive = _adaptive(rows, out, quick, progress)
            metrics["a3d_utility_ratio_vs_best_fixed"] = adaptive["utility_ratio_vs_best_fixed"]
            metrics["a3d_utility_ratio_vs_heuristic"] = adaptive["utility_ratio_vs_heuristic"]
            task_details["adaptive"] = adaptive
        else:
            filt = _filter(folder, reference, train, inputs, rows)
            metrics["filter_recall"] = filt["recall"]
            metrics["filter_bytes_saved_fraction"] = filt["bytes_saved_fraction"]
            task_details["filter"] = filt
        details["tasks"][task] = task_details
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            metrics[key] = None
    result = {"benchmark": "split", "quick": quick, "metrics": metrics, "details": details,
              "simulated": ["a3d_* (environment modelled from the measured table over synthetic traces)"],
              "measured": ["bytes (len of real bitstreams)", "accuracy", "compute seconds",
                           "latency on the testbed (root)"], "seconds": time.perf_counter() - started,
              "command": "edgepool bench split" + (" --quick" if quick else "") + " --json"}
    save_result(result, out)
    return result


def render(result: dict) -> str:
    lines = [f"split computing ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s)"]
    lines += metric_lines(result["metrics"], 52)
    return "\n".join(lines)
