"""`NodeQueues`: each node runs its work first in, first out, one piece at a time; what a scheduler sees of it."""
from __future__ import annotations

import numpy as np


class NodeQueues:
    """When each node is next free. Work submitted at `now` starts at max(now, free) and runs `seconds`."""

    def __init__(self, n: int):
        self.free_at = np.zeros(n)
        self.busy_s = np.zeros(n)  # work run so far, for utilization and energy

    def submit(self, node: int, now: float, seconds: float) -> float:
        """Queue `seconds` of work on `node` arriving at `now`; return when it finishes."""
        start = max(now, float(self.free_at[node]))
        self.free_at[node] = start + seconds
        self.busy_s[node] += seconds
        return float(self.free_at[node])

    def backlog(self, now: float) -> np.ndarray:
        """Seconds of queued work still ahead of anything that arrives at `now`, per node."""
        return np.maximum(self.free_at - now, 0.0)
