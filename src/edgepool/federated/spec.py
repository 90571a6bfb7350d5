"""`RunSpec`: everything one federated run needs, written once as JSON and read by the ServerApp and every
ClientApp (Flower passes them only its path). Each node reads only its own `train_indices`: the data of a
device never leaves it; the indices stand for "the samples this device holds"."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepool.errors import SpecError

METHODS = ("fedpipe", "homogeneous-lora", "flocoff", "fedavg", "fedprox")
TASKS = ("tweets-minilm", "tweets-smollm2", "mnist", "digits")
AGGREGATORS = ("fedavg", "zero-padding", "stacking", "svd")


@dataclass
class NodeSpec:
    """One SuperNode: the device it runs on and what it trains each round."""

    device: str
    train_indices: list[int]
    participates: bool = True
    rank: int = 0  # LoRA rank (0: the task trains whole weights, e.g. the CNN)
    batch: int = 16
    steps: int = 10  # local optimizer steps per round
    bits: int = 32  # precision of the frozen base's weights (32, 8 or 4)
    reason: str = ""  # why it sits out, when it does


@dataclass
class RunSpec:
    method: str
    task: str
    nodes: list[NodeSpec]
    rounds: int
    lr: float
    seed: int = 0
    aggregator: str = "fedavg"
    target_modules: list[str] | None = None  # LoRA targets (None: the task's default)
    proximal_mu: float = 0.0
    round_timeout_s: float = 600.0  # replies later than this are dropped (a device that died)
    n_train: int = 0  # the task's training pool the nodes' indices point into
    n_test: int = 400
    max_length: int = 48
    lora_alpha: float | None = None  # None: 2 x each node's rank, so every rank has the same scaling (2)
    notes: dict = field(default_factory=dict)

    def validate(self) -> "RunSpec":
        checks = [("method", self.method, METHODS), ("task", self.task, TASKS),
                  ("aggregator", self.aggregator, AGGREGATORS)]
        for name, value, accepted in checks:
            if value not in accepted:
                raise SpecError(field=name, value=value, accepted=", ".join(accepted))
        if self.rounds < 1:
            raise SpecError(field="rounds", value=self.rounds, accepted="an integer >= 1")
        if not any(n.participates for n in self.nodes):
            raise SpecError(field="nodes", value=[n.device for n in self.nodes],
                            accepted="at least one device that can train", hint="; ".join(n.reason for n in self.nodes))
        return self

    def lora_scaling(self, rank: int) -> tuple[float, float]:
        """(lora_alpha, alpha / rank) for a node of this rank."""
        alpha = self.lora_alpha if self.lora_alpha is not None else 2.0 * rank
        return alpha, alpha / rank

    def node(self, device: str) -> NodeSpec:
        for n in self.nodes:
            if n.device == device:
                return n
        raise SpecError(field="device", value=device, accepted=", ".join(n.device for n in self.nodes))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        data = dict(data)
        data["nodes"] = [NodeSpec(**n) for n in data["nodes"]]
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        from edgepool.atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "RunSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))
