"""RecSLAM's plots: the site with robots coloured by server, round latency per policy, the real fused map."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepool.plotting import plt, save_figure
from edgepool.scheduling.recslam.assignment import simulate_round
from edgepool.scheduling.recslam.scans import FusionRun
from edgepool.scheduling.recslam.site import RobotSite


def draw_site(site: RobotSite, assignments: dict[str, np.ndarray], path: str | Path) -> Path:
    """One panel per policy: servers (squares, named), robots coloured by their server, lines robot -> server."""
    fig, axes = plt.subplots(1, len(assignments), figsize=(6 * len(assignments), 4.6), squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(len(site.servers)))
    p = site.problem
    for ax, (name, assign) in zip(axes[0], assignments.items()):
        for r, s in enumerate(assign):
            ax.plot(*zip(site.robot_xy[r], site.server_xy[s]), color=colors[s], lw=0.6, alpha=0.6)
        ax.scatter(*site.robot_xy.T, c=colors[assign], s=22, edgecolor="k", linewidth=0.3, zorder=3)
        loads = np.bincount(assign, minlength=len(site.servers))
        for j, (x, y) in enumerate(site.server_xy):
            ax.scatter([x], [y], marker="s", s=110, color=colors[j], edgecolor="k", zorder=4)
            ax.annotate(f"{site.server_names[j]} ({loads[j]})", (x, y), textcoords="offset points", xytext=(6, 6),
                        fontsize=7)
        x0, y0, x1, y1 = site.floor
        ax.set_xlim(x0, x1), ax.set_ylim(y0, y1), ax.set_aspect("equal")
        ax.set_title(f"{name}: round {simulate_round(p, assign).latency_s * 1e3:.0f} ms, load surrogate "
                     f"{p.objective(assign) * 1e3:.0f} ms (simulated)", fontsize=9)
        ax.set_xlabel("x (m)"), ax.set_ylabel("y (m)")
    fig.suptitle(f"{p.robots} robots, {len(site.servers)} edge servers (robots coloured by server)", fontsize=10)
    return save_figure(fig, path)


def draw_latency(latency: dict[str, np.ndarray], path: str | Path) -> Path:
    """Mean simulated round latency per policy, with each held-out seed as a dot."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(latency)
    ax.bar(names, [latency[n].mean() * 1e3 for n in names], color="#4C72B0", alpha=0.7)
    for i, n in enumerate(names):
        ax.scatter(np.full(len(latency[n]), i), latency[n] * 1e3, color="k", s=8, zorder=3)
    ax.set_ylabel("round latency (ms, simulated)")
    ax.set_title("one fusion round per held-out seed: scans up, edge fusion, cloud merge", fontsize=9)
    return save_figure(fig, path)


def draw_fused_map(run: FusionRun, path: str | Path) -> Path:
    """The world, and the map the real fusion (ICP + grid + cloud merge) built, with the true robot paths."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    res = run.world.resolution
    h, w = run.world.shape
    extent = (0, w * res, 0, h * res)
    axes[0].imshow(run.world.occupied, origin="lower", cmap="gray_r", extent=extent)
    axes[0].set_title("world (ground truth)", fontsize=9)
    axes[1].imshow(-run.merged.logodds, origin="lower", cmap="gray", extent=extent, vmin=-3, vmax=3)
    axes[1].set_title(f"fused map (real run): accuracy {run.accuracy['accuracy']:.3f}, "
                      f"odometry only {run.accuracy_odometry_only['accuracy']:.3f}", fontsize=9)
    for ax in axes:
        for p in run.paths:
            ax.plot(p[:, 0], p[:, 1], lw=1)
        ax.set_xlabel("x (m)")
    return save_figure(fig, path)
