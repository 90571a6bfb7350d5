"""Workloads the power profiler times: a training or inference minibatch of a small zoo model or plain MLP."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from edgepool.errors import SpecError

PHASES = ("train", "infer")


@dataclass(frozen=True)
class Workload:
    """One minibatch kind: `model` is a zoo name or 'mlp'; `overrides` go to the zoo builder."""

    name: str
    model: str
    phase: str = "train"
    batch: int = 16
    seq: int | None = None
    image_size: int | None = None
    overrides: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.phase not in PHASES:
            raise SpecError(field=f"workload {self.name}: phase", value=self.phase, accepted=", ".join(PHASES))
        if self.batch < 1:
            raise SpecError(field=f"workload {self.name}: batch", value=self.batch, accepted="an integer >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(width: int = 512, depth: int = 4, inputs: int = 256, classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def build_step(workload: Workload, seed: int = 0) -> Callable[[], None]:
    """A function that runs one minibatch of the workload (forward+backward+SGD step, or forward only)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if workload.model == "mlp":
        net = _mlp(**workload.overrides)
        inputs = torch.randn(workload.batch, net[0].in_features, generator=gen)
        target = torch.randint(0, net[-1].out_features, (workload.batch,), generator=gen)
        loss_fn = nn.functional.cross_entropy
    else:
        from edgepool.models import build_model

        bundle = build_model(workload.model, meta=False, seed=seed, **workload.overrides)
        if workload.image_size:
            bundle.image_size = workload.image_size
        net = bundle.blocks
        inputs = bundle.example_input(workload.batch, workload.seq, generator=gen)
        target = bundle.example_target(workload.batch, workload.seq, inputs=inputs, generator=gen)
        loss_fn = bundle.loss
    if workload.phase == "infer":
        net.eval()

        def infer(batch: int | None = None) -> None:
            """One inference minibatch: the workload's batch, or its first `batch` samples."""
            with torch.inference_mode():
                net(inputs if batch is None else inputs[:batch])
        return infer
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(inputs), target).backward()
        opt.step()
    return train


# The workloads the benchmark profiles: a reference (PowerTrain pretrains on it) and new ones to transfer to,
# plus an inference workload for Fulcrum. Sizes keep one full-speed minibatch at ~5-40 ms on a laptop core.
REFERENCE = Workload("resnet18-w16-train", "resnet18", "train", batch=16, image_size=32, overrides={"width": 16})
TARGETS = (
    Workload("mobilenet_v2-w0.5-train", "mobilenet_v2", "train", batch=8, image_size=32, overrides={"width": 0.5}),
    Workload("gpt2-tiny-train", "gpt2-tiny", "train", batch=8, seq=32),
    Workload("bert-tiny-train", "bert-tiny", "train", batch=8, seq=32),
    Workload("mlp-train", "mlp", "train", batch=64),
)
INFERENCE = (
    Workload("resnet18-w16-infer-b1", "resnet18", "infer", batch=1, image_size=32, overrides={"width": 16}),
    Workload("resnet18-w16-infer-b8", "resnet18", "infer", batch=8, image_size=32, overrides={"width": 16}),
)
BENCHMARK_WORKLOADS = (REFERENCE, *TARGETS, *INFERENCE)
