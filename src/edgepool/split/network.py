"""`SplitNetwork`: head on the device, a bottleneck across the link, tail on the server.

The student is a copy of the teacher cut at `cut`; its head stays the teacher's (frozen), the bottleneck is
new and the tail may be fine-tuned. Saved as one file holding everything needed to rebuild both halves.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgepool.split.backbone import head_and_tail, imagenet_mobilenet_v2, mnist_model
from edgepool.split.bottleneck import BOTTLENECKS, IdentityBottleneck


@dataclass(frozen=True)
class BottleneckSpec:
    """Which bottleneck, where, and how big: what a trained split network is rebuilt from."""

    method: str  # "bottlefit" | "entropic" | "identity"
    cut: int
    channels: int  # what the cut outputs (C)
    size: int = 0  # bottleneck channels (b)
    hidden: int = 64
    stride: int = 2
    beta: float = 0.0  # entropic: the rate's weight in training
    step: float = 0.1  # entropic: the starting rounding step, in units of each component's std
    task: str = "photos"  # "photos" | "mnist": which base network

    @property
    def level(self) -> str:
        names = {"bottlefit": f"b{self.size}", "entropic": f"b{self.size}-beta{self.beta:g}-step{self.step:g}"}
        return names.get(self.method, "")

    def build(self) -> nn.Module:
        if self.method == "identity":
            return IdentityBottleneck()
        if self.method == "bottlefit":
            return BOTTLENECKS["bottlefit"](self.channels, self.size, self.hidden, self.stride)
        return BOTTLENECKS["entropic"](self.channels, self.size, self.hidden, self.stride)


def base_network(task: str) -> nn.Module:
    """The unsplit network's architecture for a task (weights loaded by the caller or from a checkpoint)."""
    return imagenet_mobilenet_v2() if task == "photos" else mnist_model()


class SplitNetwork(nn.Module):
    def __init__(self, teacher: nn.Module, spec: BottleneckSpec, bottleneck: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        head, tail = head_and_tail(copy.deepcopy(teacher), spec.cut)
        self.head, self.tail = head, tail
        self.bottleneck = bottleneck if bottleneck is not None else spec.build()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and (Entropic Student) bits per image, with the bottleneck's training-time quantization."""
        features, bits = self.bottleneck(self.head(x))
        return self.tail(features), bits

    # -- the two halves, one image each: what the device and the server run
    @torch.no_grad()
    def device_side(self, x: torch.Tensor) -> bytes:  # x: 1 x 3 x S x S
        return self.bottleneck.encode(self.head(x)[0])

    @torch.no_grad()
    def server_side(self, data: bytes) -> torch.Tensor:  # -> 1 x classes logits
        # channels-last, as the head's convolutions leave their output on this CPU: the same kernels then run
        # and an identity bottleneck reproduces the unsplit model bit for bit
        features = self.bottleneck.decode(data).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        return self.tail(features)

    def save(self, path: str | Path) -> None:
        torch.save({"spec": asdict(self.spec), "state_dict": self.state_dict(),
                    "extra": self.bottleneck.extra_state()}, path)

    @classmethod
    def load(cls, path: str | Path) -> "SplitNetwork":
        saved = torch.load(path, map_location="cpu", weights_only=False)
        spec = BottleneckSpec(**saved["spec"])
        network = cls(base_network(spec.task), spec)
        network.load_state_dict(saved["state_dict"])
        network.bottleneck.load_extra_state(saved["extra"])
        return network.eval()
