"""Scheduling many jobs over many edge nodes: one environment family over the `Cluster` and `CostModel`.

`fleet` turns a cluster into nodes with speeds, power and link bandwidths; `queues` keeps each node's FIFO
work; `arrivals` draws seeded arrival times; `policy` is the one interface every scheduler (learned or not)
implements; `scenarios` names the scenarios for the CLI and the benchmark. Each seed system is a subpackage
over these, with a `scenario` module (`train`, `evaluate`): `srole` (shielded multi-agent RL for training
jobs), `hode` (camera-frame regions offloaded to unlike nodes), `recslam` (robots assigned to edge servers)
and `moe2` (LLM experts on edge servers chosen under energy and latency budgets). Every figure these produce
is simulated unless its report says where it was measured.
"""
