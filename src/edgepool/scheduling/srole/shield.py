"""`Shield`: the centralized check that rewrites a colliding joint action to the nearest safe one (SROLE).

A *collision* at node j: in one decision step two or more agents send a job to j, and j's backlog at the step's
start plus the new jobs' run seconds there exceeds `capacity_s`. A joint action is *safe* when no node has a
collision. One job to a node is never a collision (it is that agent's own choice, not a joint one), so with one
agent per node and every node a candidate, a safe joint action always exists (everyone keeps its job at home).

`correct` finds one with the fewest changed agents, exactly: the collision condition is separate per node, so
the most agents a node can keep is, per node, the longest prefix of its incoming jobs sorted by run seconds that
fits `capacity_s` when that prefix has two or more jobs, else one (the local job if there is one, else the
shortest). Every other agent is redirected, shortest job first, to its most preferred node that stays
collision-free with it added; a node nobody targets always is, and there are at least as many of those as
redirected agents, so the search never fails.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def colliding_nodes(targets: dict[int, int], work: dict[int, np.ndarray], backlog: np.ndarray,
                    capacity_s: float) -> list[int]:
    """Nodes where the joint action collides. `targets[a]` is agent a's node, `work[a][j]` its job's run
    seconds on node j, `backlog[j]` node j's queued seconds at the step's start."""
    incoming: dict[int, list[int]] = {}
    for agent, node in targets.items():
        incoming.setdefault(node, []).append(agent)
    return sorted(node for node, agents in incoming.items()
                  if len(agents) >= 2 and backlog[node] + sum(work[a][node] for a in agents) > capacity_s)


@dataclass(frozen=True)
class Correction:
    """The executed joint action, the agents the shield moved, and the collisions it found in the proposal."""

    targets: dict[int, int]
    changed: list[int]
    collisions: list[int]


@dataclass(frozen=True)
class Shield:
    capacity_s: float

    def _fits(self, node: int, agents: list[int], work: dict[int, np.ndarray], backlog: np.ndarray) -> bool:
        return len(agents) < 2 or backlog[node] + sum(work[a][node] for a in agents) <= self.capacity_s

    def correct(self, targets: dict[int, int], preferences: dict[int, np.ndarray], work: dict[int, np.ndarray],
                backlog: np.ndarray) -> Correction:
        """The safe joint action nearest to `targets` (fewest agents changed); `preferences[a][j]` ranks node j
        for agent a (higher is better), and a redirected agent takes its best safe node."""
        collisions = colliding_nodes(targets, work, backlog, self.capacity_s)
        if not collisions:
            return Correction(dict(targets), [], [])
        kept = dict(targets)
        moved: list[int] = []
        for node in collisions:
            agents = sorted((a for a, t in targets.items() if t == node), key=lambda a: (work[a][node], a))
            prefix: list[int] = []
            for a in agents:
                if backlog[node] + sum(work[b][node] for b in prefix + [a]) > self.capacity_s:
                    break
                prefix.append(a)
            # two or more that fit stay; otherwise one job only, and the node's own job stays home if it came
            keep = prefix if len(prefix) >= 2 else ([node] if node in agents else agents[:1])
            moved += [a for a in agents if a not in keep]
            for a in agents:
                if a not in keep:
                    del kept[a]
        moved.sort(key=lambda a: (work[a][targets[a]], a))
        nodes = len(backlog)
        for a in moved:
            order = np.argsort(-np.asarray(preferences[a], dtype=float), kind="stable")
            for node in order:
                node = int(node)
                if node == targets[a]:
                    continue
                here = [b for b, t in kept.items() if t == node] + [a]
                if np.isfinite(work[a][node]) and self._fits(node, here, work, backlog):
                    kept[a] = node
                    break
            else:  # unreachable while agents <= nodes (see the module's docstring); fail loudly, never unsafe
                raise RuntimeError(f"shield found no safe node for agent {a} among {nodes}")
        if colliding_nodes(kept, work, backlog, self.capacity_s):  # by construction never; checked anyway
            raise RuntimeError("shield produced a colliding joint action")
        return Correction(kept, sorted(moved), collisions)
