"""Seeded arrival times: the same seed gives the same workload, so every policy meets the same jobs."""
from __future__ import annotations

import numpy as np


def poisson_arrivals(rate_per_s: float, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process of `rate_per_s` over [0, horizon_s), sorted."""
    if rate_per_s <= 0 or horizon_s <= 0:
        return np.zeros(0)
    count = rng.poisson(rate_per_s * horizon_s)
    return np.sort(rng.uniform(0.0, horizon_s, size=count))
