"""Hode's plots: frame-latency CDFs per policy, and one frame with its motion blocks and region split drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepool.plotting import draw_cdf, plt, save_figure

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def draw_latency_cdf(latencies: dict[str, np.ndarray], path: Path) -> Path:
    return draw_cdf(latencies, path, "frame latency, ms (simulated)", unit=" ms", scale=1e3,
                    title="Hode: frame latency per policy (held-out seeds)")


def draw_split(frame: np.ndarray, splits: dict[str, np.ndarray], block: int, node_names: list[str],
               path: Path) -> Path:
    """`splits`: policy -> (k, gh, gw) bool blocks per node; one panel per policy over the same frame."""
    fig, axes = plt.subplots(len(splits), 1, figsize=(9, 5.2 * len(splits)), squeeze=False)
    for ax, (name, blocks) in zip(axes[:, 0], splits.items()):
        ax.imshow(frame, cmap="gray", vmin=0, vmax=255)
        for i, b in enumerate(blocks):
            for r, c in zip(*np.nonzero(b)):
                ax.add_patch(plt.Rectangle((c * block, r * block), block, block, fill=True, alpha=0.25,
                                           color=COLORS[i % len(COLORS)], lw=0))
            ax.plot([], [], "s", color=COLORS[i % len(COLORS)], label=f"{node_names[i]}: {int(b.sum())} blocks")
        ax.set_title(f"{name} split: moving blocks ({block} px) coloured by node")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)
