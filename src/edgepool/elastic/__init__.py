"""Devices leave and join: failure detection, in-memory replicas, pipeline replay, and the checkpoint baseline.

`ElasticRun` (recovery.py) supervises one training run: it hosts the `torch.distributed` TCPStore that every
worker uses for heartbeats and membership, notices a dead device (its process exits or its heartbeat goes
stale), re-plans on the survivors with the training planner, and tells the workers to replay the interrupted
iteration. `ElasticRun(mode="checkpoint")` is the baseline that restarts every worker from the last
checkpoint (checkpoint.py saves and finds them).
`simulate_with_events` (sim_events.py) models the same recovery in the simulator;
`edgepool.simulator.simulate(..., events=...)` forwards to it. `ElasticRun(launcher="testbed")` runs the
workers on the emulated testbed instead of local processes.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ElasticRun": "edgepool.elastic.recovery",
    "ElasticOutcome": "edgepool.elastic.recovery",
    "FailureSpec": "edgepool.elastic.recovery",
    "parse_failure": "edgepool.elastic.recovery",
    "simulate_with_events": "edgepool.elastic.sim_events",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgepool.elastic' has no attribute {name!r}")
