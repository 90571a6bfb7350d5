"""Plots with matplotlib's Agg backend: pipeline Gantt charts of Reports, Pareto fronts, series over time.

`draw_gantt` takes any `Report` (simulated or measured: both carry `timeline` events) or several, drawn side
by side on one time scale so a simulated and a measured run of one plan compare at a glance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from edgepool.atomic import atomic_path  # noqa: E402
from edgepool.report import Report  # noqa: E402

COLORS = {"fwd": "#4C72B0", "bwd": "#DD8452", "send": "#8C8C8C", "recv": "#B8B8B8", "comm": "#8C8C8C",
          "allreduce": "#8172B3", "optimizer": "#55A868", "recovery": "#C44E52"}
OTHER = "#CCB974"


def save_figure(fig, path: str | Path) -> Path:
    """Write atomically (temp file, then rename) so a half-written image never looks complete."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def draw_gantt(reports: Report | Sequence[Report], path: str | Path, title: str | None = None,
               max_events: int = 20000) -> Path:
    """One row per device, forward/backward/communication/all-reduce/optimizer coloured; one panel per report."""
    return save_figure(gantt_figure(reports, title, max_events), path)


def gantt_figure(reports: Report | Sequence[Report], title: str | None = None, max_events: int = 20000):
    """The figure `draw_gantt` saves (the caller closes it)."""
    if isinstance(reports, Report):
        reports = [reports]
    if not reports:
        raise ValueError("draw_gantt needs at least one report")
    end = max((max((e.end for e in r.timeline), default=0.0) for r in reports), default=0.0) or 1.0
    rows = max(len({e.device for e in r.timeline} | set(r.per_device)) for r in reports)
    # constrained layout keeps the overall title above the panels' titles and the legend below the x labels
    fig, axes = plt.subplots(1, len(reports), figsize=(6.5 * len(reports), 1.6 + 0.35 * max(rows, 2)),
                             squeeze=False, sharex=True, layout="constrained")
    for ax, report in zip(axes[0], reports):
        devices = list(report.per_device) or sorted({e.device for e in report.timeline})
        for e in report.timeline:
            if e.device not in devices:
                devices.append(e.device)
        index = {d: i for i, d in enumerate(devices)}
        events = report.timeline[:max_events]
        for e in events:
            comm = e.kind in ("send", "recv", "comm")
            y, height = (index[e.device] + 0.1, 0.3) if comm else (index[e.device] - 0.4, 0.45)
            ax.broken_barh([(e.start, max(e.end - e.start, end * 1e-4))], (y, height),
                           facecolors=COLORS.get(e.kind, OTHER), edgecolor="none")
        ax.set_yticks(range(len(devices)))
        ax.set_yticklabels(devices, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, end * 1.02)
        ax.set_xlabel("time (s)")
        label = f"{report.source}: {report.planner or ''} {report.model or ''} on {report.cluster or ''}".strip()
        if report.throughput:
            label += f"\n{report.throughput:.2f} samples/s, iteration {report.iteration_time_s:.3f} s"
        elif not report.feasible:
            label += "\ninfeasible: " + (report.infeasible_reason or "")[:80]
        if len(report.timeline) > max_events:
            label += f" (first {max_events} events)"
        ax.set_title(label, fontsize=8)
    kinds = sorted({e.kind for r in reports for e in r.timeline})
    handles = [Patch(color=COLORS.get(k, OTHER), label=k) for k in kinds]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pareto_front(points: Iterable[tuple[float, float]], minimize_x: bool = True,
                 maximize_y: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes, in input order. One sort and one sweep, so
    every subset of a dozen experts (4,095 points) is cheap: after sorting by (x, y) with both axes turned to
    "less is better", a point is on the front when it beats every point before it on y (or repeats the last
    point kept)."""
    sx, sy = (1 if minimize_x else -1), (-1 if maximize_y else 1)
    pts = [(sx * x, sy * y) for x, y in points]
    front, best, last = [], float("inf"), None
    for i in sorted(range(len(pts)), key=pts.__getitem__):
        if pts[i][1] < best or pts[i] == last:
            front.append(i)
            best, last = pts[i][1], pts[i]
    return sorted(front)


def draw_pareto(points: Sequence, path: str | Path, x_label: str = "x", y_label: str = "y",
                minimize_x: bool = True, maximize_y: bool = True, title: str | None = None,
                front: Sequence[int] | None = None, highlight: int | None = None,
                highlight_label: str = "chosen", points_label: str = "points") -> Path:
    """Scatter of (x, y) or (x, y, label) points with the Pareto front drawn as a line.

    `front`: the front's indices when the caller computed it already (else `pareto_front`); `highlight`: the
    index of one point to mark with a star (a chosen mode, say), named `highlight_label` in the legend."""
    if not points:
        raise ValueError("draw_pareto needs at least one point")
    xy = [(float(p[0]), float(p[1])) for p in points]
    labels = [p[2] if len(p) > 2 else None for p in points]
    if front is None:
        front = pareto_front(xy, minimize_x, maximize_y)
    front = sorted(front, key=lambda i: xy[i][0])
    many = len(xy) > 200  # thousands of modes: small, see-through dots
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([x for x, _ in xy], [y for _, y in xy], s=4 if many else 14, alpha=0.35 if many else 1.0,
               color="#8C8C8C", label=points_label)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-o", color="#C44E52", ms=2 if many else 4,
            label="Pareto front")
    if highlight is not None:
        ax.scatter([xy[highlight][0]], [xy[highlight][1]], s=60, marker="*", color="k", label=highlight_label,
                   zorder=3)
    for (x, y), label in zip(xy, labels):
        if label:
            ax.annotate(str(label), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def draw_energy_pareto(points: Mapping[str, Sequence[tuple[float, float]]],
                       chosen: Mapping[str, tuple[float, float]], path: str | Path, title: str | None = None) -> Path:
    """Throughput against energy per sample: each group's (throughput, J/sample) points in its own colour,
    the front over all of them (more throughput, less energy) as a line, each group's chosen point a star."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = [xy for group in points.values() for xy in group]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, group) in enumerate(points.items()):
        color = cycle[k % len(cycle)]
        if group:
            ax.scatter([x for x, _ in group], [y for _, y in group], s=10, alpha=0.45, color=color, label=label)
        if label in chosen:
            ax.scatter([chosen[label][0]], [chosen[label][1]], s=90, marker="*", color=color, edgecolors="k",
                       linewidths=0.6, zorder=3)
    if every:
        front = sorted((every[i] for i in pareto_front(every, minimize_x=False, maximize_y=False)))
        ax.plot([x for x, _ in front], [y for _, y in front], "-", color="k", lw=1, label="Pareto front")
    ax.set_xlabel("throughput (samples/s)")
    ax.set_ylabel("energy per sample (J)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="stars: chosen plans", title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def draw_series(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, x_label: str = "x",
                y_label: str = "y", title: str | None = None, steps: bool = True, marker: str | None = None) -> Path:
    """One line per label through its (x, y) points; with `steps` each value holds until the next x (a rate
    per time bin, say); `marker` marks the points themselves (e.g. "o" for one per round)."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, points in series.items():
        xs, ys = [x for x, _ in points], [y for _, y in points]
        if steps:
            ax.step(xs, ys, where="post", label=label)
        else:
            ax.plot(xs, ys, label=label, marker=marker)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title)
    if series:
        ax.legend()
    return save_figure(fig, path)


def draw_cdf(samples: Mapping[str, Sequence[float]], path: str | Path, x_label: str, title: str | None = None,
             unit: str = "", scale: float = 1.0, log_x: bool = True) -> Path:
    """One empirical CDF per label (a step per sample), its mean in the legend; `scale` converts the samples
    to the axis' unit (1e3 for seconds shown in ms). For latency and completion-time distributions."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in samples.items():
        xs = np.sort(np.asarray(values, dtype=float)) * scale
        if xs.size:
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post",
                    label=f"{label} (mean {xs.mean():.3g}{unit})")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("fraction")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if samples:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
