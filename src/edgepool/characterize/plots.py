"""The characterization's two figures: where each setting's time per sample goes (fetch stall against
compute, stacked), and the distribution of its iteration times (variability)."""
from __future__ import annotations

from pathlib import Path

from edgepool.characterize.measurement import Measurement
from edgepool.plotting import save_figure  # noqa: I001 - sets matplotlib's Agg backend before pyplot loads

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402


def draw_stall_compute(rows: list[Measurement], path: str | Path, title: str = "") -> Path:
    """Horizontal stacked bars: mean fetch stall and compute per sample (ms), one bar per setting."""
    labels = [r.label for r in rows]
    per_sample = [1e3 / r.setting["batch_size"] for r in rows]
    stall = [r.mean_stall_s * k for r, k in zip(rows, per_sample)]
    compute = [r.mean_compute_s * k for r, k in zip(rows, per_sample)]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.32 * len(rows)))
    ax.barh(labels, stall, color="#C44E52", label="fetch stall (waiting for the DataLoader)")
    ax.barh(labels, compute, left=stall, color="#4C72B0", label="compute (forward + backward + step)")
    for y, r in enumerate(rows):
        ax.annotate(f"{r.stall_fraction:.0%} stall", (stall[y] + compute[y], y), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time per sample (ms), measured")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax.set_title(title or "where the time per sample goes", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_iteration_times(rows: list[Measurement], path: str | Path, title: str = "") -> Path:
    """One box per setting over its measured iteration times (ms), with the CV next to it."""
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.32 * len(rows)))
    ax.boxplot([[t * 1e3 for t in r.iteration_times_s] for r in rows], orientation="horizontal", showfliers=True,
               flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(rows) + 1))
    ax.set_yticklabels([f"{r.label} (b{r.setting['batch_size']}, CV {r.iteration_time_cv:.2f})" for r in rows],
                       fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel("iteration time (ms), measured")
    ax.set_title(title or "iteration time distribution per setting", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
