"""The plan hand-over: after a membership change, who holds each model block's state and what moves where.

Pure functions of plans (no processes, no I/O). The supervisor (`recovery.py`) publishes their answer to the
workers of the next generation; the elastic simulation (`sim_events.py`) prices the same moves with the cost
model (`transfer_seconds`, over `edgepool.network`). A block's state lives on the devices that served it and,
as a replica, on the ring successor of each (`replica.py`), so a dead device's blocks come from its successor.
"""
from __future__ import annotations

from edgepool.cluster import Cluster
from edgepool.costmodel import OPTIMIZER_STATE, CostModel
from edgepool.network import LinkCache, transfers_time
from edgepool.plan import Plan
from edgepool.profile import ModelProfile
from edgepool.runtime.layout import Layout


def block_sources(old: Plan, alive: list[str], batch: int) -> dict[int, str]:
    """For every block, a live device holding its state: one that served it, else the dead owner's replica holder."""
    devices = old.devices
    layout = Layout(old, batch)
    out: dict[int, str] = {}
    for b in range(old.num_layers):
        owners = [d for d in devices if layout.stage_of(d).layers[0] <= b < layout.stage_of(d).layers[1]]
        live = [d for d in owners if d in alive]
        if live:
            out[b] = live[0]
            continue
        holders = [devices[(devices.index(d) + 1) % len(devices)] for d in owners]
        holders = [h for h in holders if h in alive]
        if not holders:
            raise RuntimeError(f"block {b} is lost: its devices {owners} and their replica holders all failed")
        out[b] = holders[0]
    return out


def block_transfers(old: Plan | None, new: Plan, sources: dict[int, str], batch: int) -> list[list]:
    """[src, dst, blocks]: what moves so that every device of `new` holds its stage."""
    old_ranges = {}
    if old is not None:
        lay = Layout(old, batch)
        old_ranges = {d: lay.stage_of(d).layers for d in old.devices}
    lay = Layout(new, batch)
    moves: dict[tuple[str, str], list[int]] = {}
    for d in new.devices:
        start, end = lay.stage_of(d).layers
        o0, o1 = old_ranges.get(d, (0, 0))
        for b in range(start, end):
            if o0 <= b < o1 or sources[b] == d:
                continue
            moves.setdefault((sources[b], d), []).append(b)
    return [[s, d, blocks] for (s, d), blocks in sorted(moves.items())]


def state_bytes(profile: ModelProfile, start: int, end: int, cost_model: CostModel) -> float:
    """Weights plus optimizer state of blocks [start, end) (the cost model's optimizer multiplier)."""
    weights = sum(layer.param_bytes for layer in profile.layers[start:end])
    return weights * (1.0 + OPTIMIZER_STATE[cost_model.optimizer])  # the weights' bytes again per state slot


def transfer_seconds(old: Plan, new: Plan, profile: ModelProfile, cluster: Cluster, cost_model: CostModel,
                     alive: list[str]) -> float:
    """Seconds to move every block's state from its holder on `alive` to its device in `new`: the moves run in
    parallel, priced by the one network model (a shared medium's capacity is split among them)."""
    sources = block_sources(old, alive, old.batch)
    moves = [(src, dst, sum(state_bytes(profile, b, b + 1, cost_model) for b in blocks))
             for src, dst, blocks in block_transfers(old, new, sources, old.batch)]
    return transfers_time(moves, LinkCache(cluster), one_at_a_time=False)[0]
