"""Flower strategies for a pool of unlike devices (subclasses of Flower's own `FedAvg` and `FedProx`).

Flower's FedAvg sends every node the same arrays and averages same-shaped replies. A pool needs more, and
Flower users keep asking for it (flwr #1032, #2780, #538: per-client configurations; #2037: models of
different sizes per client): here each node is first asked which device it is (a QUERY message), then gets
its own configuration and its own arrays (`Exchange.download`: e.g. LoRA at its own rank), devices the plan
leaves out are not sampled, and replies of different shapes are combined by the method's `Exchange`.
A node that dies mid-round sends no reply: the round ends with the others when the SuperLink marks the node
offline (its heartbeat stops) or at `round_timeout_s`, whichever comes first. Every round's timing, bytes and
failures are logged for the report.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from logging import INFO
from pathlib import Path
from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.supercore import log

from edgepool.federated.exchange import Exchange, to_record
from edgepool.federated.spec import RunSpec

QUERY_TIMEOUT_S = 120.0


@dataclass
class RoundLog:
    round: int
    started: float  # time.time() when the round's messages were built
    finished: float = 0.0  # when its replies were aggregated
    bytes_down: int = 0
    bytes_up: int = 0
    replies: list[str] = field(default_factory=list)  # devices that answered
    failures: list[str] = field(default_factory=list)  # devices asked that did not answer in time
    device_train_s: dict[str, float] = field(default_factory=dict)
    examples: int = 0  # samples trained this round, all devices

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class PoolFedAvg(FedAvg):
    """FedAvg with per-device configurations and arrays (see the module docstring)."""

    def __init__(self, spec: RunSpec, exchange: Exchange, progress_path: str | Path | None = None, **kwargs):
        kwargs.setdefault("min_train_nodes", 1)
        kwargs.setdefault("min_available_nodes", 1)
        super().__init__(fraction_evaluate=0.0, **kwargs)
        self.spec, self.exchange = spec, exchange
        self.devices: dict[int, str] = {}  # node id -> device
        self.state = exchange.initial()
        self.rounds: list[RoundLog] = []
        self.progress_path = Path(progress_path) if progress_path else None

    # -- which node is which device
    def _learn_devices(self, grid: Grid) -> None:
        """Ask every node not yet known which device it runs on; wait until every device of the spec is known."""
        wanted = {n.device for n in self.spec.nodes}
        deadline = time.time() + QUERY_TIMEOUT_S
        while not wanted <= set(self.devices.values()) and time.time() < deadline:
            unknown = [n for n in grid.get_node_ids() if n not in self.devices]
            if not unknown:
                time.sleep(1.0)
                continue
            queries = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY,
                               dst_node_id=n) for n in unknown]
            for reply in grid.send_and_receive(queries, timeout=QUERY_TIMEOUT_S):
                if not reply.has_error():
                    self.devices[reply.metadata.src_node_id] = str(reply.content["config"]["device"])
        missing = wanted - set(self.devices.values())
        if missing:
            log(INFO, "devices that never connected: %s", sorted(missing))

    # -- one round
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._learn_devices(grid)
        entry = RoundLog(round=server_round, started=time.time())
        self.rounds.append(entry)
        messages = []
        online = set(grid.get_node_ids())  # the SuperLink drops nodes whose heartbeat stopped
        for node_id, device in sorted(self.devices.items()):
            node = self.spec.node(device)
            if not node.participates or node_id not in online:
                continue
            down = to_record(self.exchange.download(self.state, node))
            entry.bytes_down += down.count_bytes()
            node_config = ConfigRecord({"server-round": server_round,
                                        "proximal-mu": float(getattr(self, "proximal_mu", 0.0))})
            messages.append(Message(content=RecordDict({"arrays": down, "config": node_config}),
                                    message_type=MessageType.TRAIN, dst_node_id=node_id))
        self.log_event({"event": "round-started", "round": server_round, "devices": len(messages)})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        entry = self.rounds[-1]
        uploads = []
        for reply in valid:
            device = self.devices[reply.metadata.src_node_id]
            metrics = reply.content["metrics"]
            up = reply.content["arrays"]
            entry.bytes_up += up.count_bytes()
            entry.replies.append(device)
            entry.device_train_s[device] = float(metrics["train-s"])
            entry.examples += int(metrics["trained-examples"])
            uploads.append((self.spec.node(device), up.to_torch_state_dict(), float(metrics["num-examples"])))
        entry.failures = sorted({d for d in self.devices.values() if self.spec.node(d).participates}
                                - set(entry.replies))
        if uploads:
            self.state = self.exchange.aggregate(self.state, uploads)
        entry.finished = time.time()
        self.log_event({"event": "round-finished", **self.round_record(entry)})
        metrics = MetricRecord({"replies": len(uploads), "examples": entry.examples})
        return to_record(self.state), metrics

    def round_record(self, entry: RoundLog) -> dict:
        return {**asdict(entry), "seconds": round(entry.seconds, 3)}

    def log_event(self, event: dict) -> None:
        if self.progress_path is not None:
            with open(self.progress_path, "a") as f:
                f.write(json.dumps({"time": time.time(), **event}) + "\n")


class PoolFedProx(PoolFedAvg, FedProx):
    """FedProx (Li et al. 2020): FedAvg's server, and a proximal term mu/2 ||w - w_global||^2 in every
    device's local loss (the ClientApp reads `proximal-mu` from the round's config)."""

    def __init__(self, spec: RunSpec, exchange: Exchange, progress_path: str | Path | None = None, **kwargs):
        super().__init__(spec, exchange, progress_path, proximal_mu=spec.proximal_mu, **kwargs)
