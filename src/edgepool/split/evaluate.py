"""The rate-accuracy table: every option's accuracy, bytes per image and compute seconds, measured.

Accuracy is top-1 agreement with the reference labels (the teacher's top-1 for photos, the true digits for
MNIST) over the whole test set; bytes are the mean `len()` of what the device would send; compute seconds
are timed one image at a time on one thread of this host, as the testbed's workers run them.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgepool.local_device import torch_threads
from edgepool.split.data import ImageSet
from edgepool.split.options import OptionMeasure
from edgepool.split.pipeline import Pipeline


def _per_image_seconds(fn, items, repeats: int = 1) -> float:
    with torch_threads(1):
        fn(items[0])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            for item in items:
                fn(item)
        return (time.perf_counter() - start) / (repeats * len(items))


def measure_option(pipe: Pipeline, test: ImageSet, timing_images: int = 6, batch: int = 48) -> OptionMeasure:
    """One row of the table: accuracy and bytes over `test`, seconds per image on a few of its images."""
    predictions, sizes = [], []
    for i in range(0, len(test), batch):
        out = pipe.device_batch(test.images[i:i + batch])
        if pipe.option.location == "device":
            predictions += list(out)
        else:
            sizes += [len(p) for p in out]
            predictions += list(pipe.server_batch(out))
    accuracy = float(np.mean(np.asarray(predictions) == test.labels))
    sample = test.subset(timing_images).images
    device_s = _per_image_seconds(pipe.device, list(sample))
    server_s = 0.0
    if pipe.option.location != "device":
        payloads = [pipe.device(image) for image in sample]
        server_s = _per_image_seconds(pipe.server, payloads)
    return OptionMeasure(pipe.option, accuracy, float(np.mean(sizes)) if sizes else 0.0, device_s, server_s)


def rate_accuracy_table(pipes: list[Pipeline], test: ImageSet, progress: Callable[[str], None] | None = None,
                        timing_images: int = 6) -> list[OptionMeasure]:
    rows = []
    for pipe in pipes:
        if progress:
            progress(pipe.option.name)
        rows.append(measure_option(pipe, test, timing_images))
    return rows


def best_at_accuracy(rows: list[OptionMeasure], floor: float, methods: tuple[str, ...]) -> OptionMeasure | None:
    """The fewest bytes among `methods`' rows whose accuracy is at least `floor` (None if none reaches it)."""
    eligible = [r for r in rows if r.option.method in methods and r.accuracy >= floor - 1e-12]
    return min(eligible, key=lambda r: r.bytes_per_image, default=None)


def draw_rate_accuracy(rows: list[OptionMeasure], path, title: str | None = None):
    """Accuracy against bytes per image, one curve per method (and resolution); local as a line."""
    from edgepool.plotting import save_figure, plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = plt.get_cmap("tab20").colors
    curves: dict[str, list[OptionMeasure]] = {}
    for r in rows:
        if r.option.location == "device":
            continue
        label = r.option.method if r.option.location == "server" else f"{r.option.method} cut {r.option.cut}"
        if r.option.resolution != max(o.option.resolution for o in rows):
            label += f" @{r.option.resolution}px"
        curves.setdefault(label, []).append(r)
    for i, (label, points) in enumerate(sorted(curves.items())):
        points.sort(key=lambda r: r.bytes_per_image)
        learned = points[0].option.method in ("bottlefit", "entropic")
        ax.plot([p.bytes_per_image for p in points], [100 * p.accuracy for p in points],
                marker="*" if learned else "o", ms=9 if learned else 3, label=label,
                linestyle="--" if "@" in label else "-", color=colors[i % len(colors)])
    local = [r for r in rows if r.option.location == "device"]
    if local:
        ax.axhline(100 * max(r.accuracy for r in local), color="black", lw=0.8, label="unsplit (local)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (real bitstreams, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "rate-accuracy")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)
