"""MoE²'s plots: energy against held-out accuracy for every expert subset (Pareto front, budget, DMO's pick) per
category, and each expert's measured accuracy per category. Matplotlib with the Agg backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepool.plotting import pareto_front, save_figure
from edgepool.scheduling.moe2.queries import CATEGORIES
from edgepool.scheduling.moe2.scenario import LEVELS, VARIANTS, Prepared, Scorer
from edgepool.scheduling.scenarios import tick


def draw_plots(out: Path, prep: Prepared, w_test: np.ndarray, rows: list[dict], progress=None) -> dict:
    """The Pareto plot (every subset, per category) and the per-expert quality heatmap; {name: path}."""
    from edgepool.plotting import plt

    tick(progress, "plots", 0, 2)
    t, cats = prep.table, np.array(prep.table.categories)
    k = len(VARIANTS)
    plots = {}
    level = len(LEVELS) // 2
    fig, axes = plt.subplots(1, len(CATEGORIES), figsize=(4 * len(CATEGORIES), 3.6), sharey=True)
    for ax, c in zip(axes, CATEGORIES):
        te = ~prep.train & (cats == c)
        held = Scorer(w_test[te], t.probs[te], t.answers[te])
        e = prep.energy[prep.train & (cats == c)].mean(0)
        masks = range(1, 1 << k)
        pts = np.array([(sum(e[i] for i in range(k) if m >> i & 1),
                         held.accuracy(tuple(i for i in range(k) if m >> i & 1))) for m in masks])
        front = sorted(pareto_front(pts.tolist()), key=lambda i: pts[i, 0])  # drawn left to right
        row = next(r for r in rows if r["category"] == c and r["level"] == level)
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.25, color="#8C8C8C", label="all subsets")
        ax.plot(pts[front, 0], pts[front, 1], "-o", ms=2, color="#C44E52", label="Pareto front")
        dmo_pick = row["picks"]["dmo"]
        ax.scatter([dmo_pick["energy_j"]], [dmo_pick["test_accuracy"]], s=90, marker="*", color="k",
                   label="DMO pick", zorder=3)
        ax.axvline(row["energy_budget_j"], ls="--", color="#4C72B0", lw=1, label="energy budget")
        ax.set_xscale("log")
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("energy per query, J (simulated)")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(fontsize=6)
    fig.suptitle(f"MoE²: every expert subset (held-out accuracy), budget level {level}; DMO chose on the train split",
                 fontsize=10)
    plots["pareto"] = str(save_figure(fig, out / "moe2_pareto.png"))
    tick(progress, "plots", 1, 2)
    acc = np.array([[t.correct[cats == c, j].mean() for c in CATEGORIES] for j in range(k)])  # [K, C]
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(acc, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, fontsize=8)
    ax.set_yticks(range(k), [f"{v.name} @ {s}" for v, s in zip(t.variants, prep.placement)], fontsize=7)
    for i in range(k):
        for j in range(len(CATEGORIES)):
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="accuracy (measured, all queries)")
    ax.set_title("Per-expert accuracy per category (SmolLM2-135M variants)", fontsize=9)
    plots["expert_quality"] = str(save_figure(fig, out / "moe2_expert_quality.png"))
    tick(progress, "plots", 2, 2)
    return plots

