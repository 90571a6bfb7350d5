"""Devices leave and join: failure detection, in-memory replicas, pipeline replay, and the checkpoint baseline.

`ElasticRun` (recovery.py) supervises one training run: it hosts the `torch.distributed` TCPStore that every
worker uses for heartbeats and membership, notices a dead device (its process exits or its heartbeat goes
stale), re-plans on the survivors (`replan.py`), hands the blocks over (`handover.py`: who holds each block's
state, what moves where) and tells the workers to replay the interrupted iteration. How it recovers is a
`RecoveryStrategy` (strategy.py, one method per phase): `PipelineReplay` does the above, `CheckpointRestart`
is the baseline that restarts every worker from the last checkpoint (checkpoint.py saves and finds them).
`ElasticRun(launcher="testbed")` runs the workers on the emulated testbed instead of local processes.
`simulate_elastic` (sim_events.py) models the same recovery in the simulator for the events of
`edgepool.events` (`DeviceFailure`, `DeviceJoin`) and returns a `Report` whose timeline holds the segments.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ElasticRun": "edgepool.elastic.recovery",
    "ElasticOutcome": "edgepool.elastic.recovery",
    "FailureSpec": "edgepool.elastic.recovery",
    "JoinSpec": "edgepool.elastic.recovery",
    "Supervision": "edgepool.elastic.recovery",
    "Training": "edgepool.elastic.recovery",
    "CheckpointRestart": "edgepool.elastic.strategy",
    "PipelineReplay": "edgepool.elastic.strategy",
    "RecoveryFailed": "edgepool.elastic.strategy",
    "RecoveryStrategy": "edgepool.elastic.strategy",
    "recovery_strategy": "edgepool.elastic.strategy",
    "block_sources": "edgepool.elastic.handover",
    "block_transfers": "edgepool.elastic.handover",
    "default_replan": "edgepool.elastic.replan",
    "replanner": "edgepool.elastic.replan",
    "simulate_elastic": "edgepool.elastic.sim_events",
    "simulate_with_events": "edgepool.elastic.sim_events",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgepool.elastic' has no attribute {name!r}")
