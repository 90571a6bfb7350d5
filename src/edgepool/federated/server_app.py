"""The Flower ServerApp: runs the spec's strategy for its rounds, tests the global model after every round
on the server (centralized evaluation, outside the rounds' timing) and writes the run's report."""
from __future__ import annotations

import json
import time

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from edgepool.federated.exchange import to_record
from edgepool.federated.methods import make_exchange, make_strategy
from edgepool.federated.spec import RunSpec
from edgepool.federated.tasks import make_task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    spec = RunSpec.load(str(context.run_config["spec"]))
    report_path = str(context.run_config["report"])
    task = make_task(spec)
    exchange = make_exchange(spec, task)
    strategy = make_strategy(spec, exchange, progress_path=report_path + ".progress")
    accuracy: dict[int, dict] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        started = time.time()
        value = task.evaluate(exchange.evaluation_model(task, strategy.state))
        accuracy[server_round] = {"accuracy": value, "eval_s": time.time() - started}
        strategy.log_event({"event": "evaluated", "round": server_round, "accuracy": value})
        return MetricRecord({"accuracy": value})

    started = time.time()
    strategy.start(grid=grid, initial_arrays=to_record(strategy.state), num_rounds=spec.rounds,
                   timeout=spec.round_timeout_s, evaluate_fn=evaluate)
    rounds, train_s = [], 0.0
    for entry in strategy.rounds:
        train_s += entry.seconds
        rounds.append({**strategy.round_record(entry), "train_time_s": round(train_s, 3),
                       **accuracy.get(entry.round, {})})
    report = {"method": spec.method, "task": spec.task, "aggregator": spec.aggregator,
              "data_source": task.source, "initial_accuracy": accuracy.get(0, {}).get("accuracy"),
              "rounds": rounds, "wall_s": time.time() - started,
              "devices": {str(k): v for k, v in strategy.devices.items()}}
    from edgepool.atomic import write_text_atomic

    write_text_atomic(report_path, json.dumps(report))
