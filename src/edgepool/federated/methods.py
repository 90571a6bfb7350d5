"""Which `Exchange` and which Flower strategy each method runs with."""
from __future__ import annotations

from pathlib import Path

from edgepool.federated.exchange import Exchange, WholeModel
from edgepool.federated.spec import RunSpec


def make_exchange(spec: RunSpec, task) -> Exchange:
    if task.kind == "image":
        return WholeModel(task)
    from edgepool.federated.exchange import LoraExchange

    return LoraExchange(task, "fedavg" if spec.method == "homogeneous-lora" else spec.aggregator)


def make_strategy(spec: RunSpec, exchange: Exchange, progress_path: str | Path | None = None):
    from edgepool.federated.strategies import PoolFedAvg, PoolFedProx

    if spec.method == "fedprox":
        return PoolFedProx(spec, exchange, progress_path)
    return PoolFedAvg(spec, exchange, progress_path)
