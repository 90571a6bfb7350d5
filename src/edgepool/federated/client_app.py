"""The Flower ClientApp every SuperNode runs: it answers which device it is (QUERY) and trains (TRAIN).

Its node config names the device (`device='rpi4-a'`); the run config names the `RunSpec` file. It trains on
the device's own samples only, with the configuration the plan gave that device, and replies with the
tensors its method's `Exchange` uploads, the examples trained and the seconds the local steps took.
"""
from __future__ import annotations

import functools

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgepool.federated.exchange import to_record
from edgepool.federated.spec import RunSpec

app = ClientApp()


@functools.lru_cache(maxsize=2)
def _run(spec_path: str):
    from edgepool.federated.methods import make_exchange
    from edgepool.federated.tasks import make_task

    spec = RunSpec.load(spec_path)
    task = make_task(spec)
    return spec, task, make_exchange(spec, task)


def warm_up(spec_path: str | None = None, device: str | None = None) -> None:
    """Load what every round needs before the SuperExec forks its tasks (see `superexec`): the data, the
    language model and this device's model (EDGEPOOL_FEDERATED_SPEC and EDGEPOOL_DEVICE name them)."""
    import os

    path = spec_path or os.environ.get("EDGEPOOL_FEDERATED_SPEC")
    device = device or os.environ.get("EDGEPOOL_DEVICE")
    if not path:
        return
    spec, task, _ = _run(path)
    if device and any(n.device == device and n.participates for n in spec.nodes):
        task.warm_up(task.build(spec.node(device)), spec.node(device))


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(content=RecordDict({"config": ConfigRecord({"device": str(context.node_config["device"])})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)  # one thread per device: its CPU quota is a fraction of one core
    spec, task, exchange = _run(str(context.run_config["spec"]))
    node = spec.node(str(context.node_config["device"]))
    server_round = int(msg.content["config"]["server-round"])
    arrays = msg.content["arrays"].to_torch_state_dict()
    model, anchor = exchange.client_model(task, arrays, node, context.state)
    result = task.train(model, node, round_seed=spec.seed * 1000 + server_round, anchor=anchor)
    up = to_record(exchange.upload(model, node))
    # FedAvg's weight is the device's data size, not what it trained this round: under a deadline fast devices
    # train more, and weighting by that would tilt the model to their (non-IID) labels
    metrics = MetricRecord({"num-examples": len(node.train_indices), "trained-examples": result.examples,
                            "train-s": result.train_s, "loss": result.loss, "steps": result.steps})
    return Message(content=RecordDict({"arrays": up, "metrics": metrics}), reply_to=msg)
