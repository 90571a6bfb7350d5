"""Whole units (rows, heads, columns, layers) split by a plan's fractional shares."""
from __future__ import annotations


def split_counts(total: int, weights: list[float]) -> list[int]:
    """Integers summing to `total` in proportion to `weights` (largest remainder, ties to the first)."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    weight_sum = sum(weights)
    if weight_sum <= 0:
        raise ValueError(f"weights must have a positive sum, got {weights}")
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts
