"""The edge model (a small BatchNorm CNN) and the cloud's stronger foundation model (a wider, deeper one), both
trained on the clean train digits only and cached, plus the normalization state that travels between them.

Only normalization layers adapt: CEMA sends the edge nothing but the affine parameters of its BatchNorm layers
(and here also their running statistics, re-estimated on the uploads, since a forward-only edge cannot
re-estimate them itself and they carry most of what a covariate shift changes).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgepool.adapt.data import Digits, load_digits_split
from edgepool.atomic import atomic_path
from edgepool.errors import SpecError

DEFAULT_CACHE = Path(".edgepool-cache/adapt")
WEIGHTS_FORMAT = 2  # bump when what a weights file holds changes
NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N,H,W] -> float tensor [N,1,H,W] in [0, 1] (what both models read)."""
    return torch.as_tensor(np.asarray(images), dtype=torch.float32).unsqueeze(1) / 255.0


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def edge_cnn(num_classes: int = 10) -> nn.Sequential:
    """Three conv-BN-ReLU blocks (16, 32, 64 channels), global average pool, linear: about 24 k parameters."""
    return nn.Sequential(*_block(1, 16), nn.MaxPool2d(2),  # 16 x H/2 x W/2
                         *_block(16, 32), nn.MaxPool2d(2),  # 32 x H/4 x W/4
                         *_block(32, 64),  # 64 x H/4 x W/4
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def cloud_cnn(num_classes: int = 10) -> nn.Sequential:
    """Five conv-BN-ReLU blocks (32..128 channels), global average pool, linear: about 12x the edge model's
    parameters and 10x its multiply-adds."""
    return nn.Sequential(*_block(1, 32), nn.MaxPool2d(2),  # 32 x H/2 x W/2
                         *_block(32, 64), *_block(64, 64), nn.MaxPool2d(2),  # 64 x H/4 x W/4
                         *_block(64, 128), *_block(128, 128),  # 128 x H/4 x W/4
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


# ----------------------------------------------------------------------------- normalization state
def norm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers by module name (the only layers CEMA adapts)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def norm_params(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters (weight, bias) of every BatchNorm layer."""
    return [p for m in norm_layers(model).values() for p in (m.weight, m.bias) if p is not None]


def norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm layer's weight, bias, running_mean and running_var, keyed "layer.key"."""
    state = {}
    for name, m in norm_layers(model).items():
        for key in NORM_KEYS:
            value = getattr(m, key)
            if value is not None:
                state[f"{name}.{key}"] = value.detach().clone()
    return state


def load_norm_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Write `state` (as `norm_state` makes it, any subset of its keys) into `model`'s BatchNorm layers."""
    layers = norm_layers(model)
    for full, value in state.items():
        name, _, key = full.rpartition(".")
        if name not in layers or key not in NORM_KEYS or getattr(layers[name], key) is None:
            raise SpecError(field="state", value=full, accepted="keys of norm_state(model): " +
                            ", ".join(sorted(norm_state(model))[:4]) + ", ...")
        target = getattr(layers[name], key)
        if tuple(value.shape) != tuple(target.shape):
            raise SpecError(field=f"state[{full!r}].shape", value=tuple(value.shape), accepted=str(tuple(target.shape)))
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Inside the block, every BatchNorm layer normalizes with the statistics of the batch it is given (test-time
    normalization, as Tent, EATA and CEMA use), without touching its running statistics: a forward-only
    operation, which a device that cannot backpropagate can afford."""
    layers = norm_layers(model)
    saved = {name: (m.training, m.momentum) for name, m in layers.items()}
    for m in layers.values():
        m.train()
        m.momentum = 0.0  # running = (1 - 0) x running + 0 x batch: unchanged
    try:
        yield model
    finally:
        for name, m in layers.items():
            m.train(saved[name][0])
            m.momentum = saved[name][1]


@torch.no_grad()
def reestimate_norm_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Replace every BatchNorm layer's running statistics by those of `x` [N,1,H,W] (one exact pass)."""
    layers = norm_layers(model)
    saved = {name: m.momentum for name, m in layers.items()}
    was_training = model.training
    for m in layers.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the exact statistics of this pass
    model.train()
    model(x)
    for name, m in layers.items():
        m.momentum = saved[name]
    model.train(was_training)


# ----------------------------------------------------------------------------- trained pair
@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 4
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0


SETTINGS = {"mnist": {"edge": TrainSettings(epochs=6), "cloud": TrainSettings(epochs=4)},
            "digits": {"edge": TrainSettings(epochs=15), "cloud": TrainSettings(epochs=15)}}


@dataclass
class TrainedModels:
    """The clean-trained edge and cloud models (eval mode), their clean held-out accuracy and provenance."""

    edge: nn.Sequential
    cloud: nn.Sequential
    data: Digits
    notes: dict

    def copies(self) -> tuple[nn.Sequential, nn.Sequential]:
        """Fresh deep copies (edge, cloud): each run adapts its own, the trained weights stay untouched."""
        return copy.deepcopy(self.edge), copy.deepcopy(self.cloud)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: TrainSettings) -> None:
    """Cross-entropy, Adam with a cosine schedule, shuffled mini-batches."""
    generator = torch.Generator().manual_seed(s.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, s.epochs * -(-len(x) // s.batch))
    model.train()
    for _ in range(s.epochs):
        for idx in torch.randperm(len(x), generator=generator).split(s.batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of `model` in eval mode on uint8 images [N,H,W]."""
    model.eval()
    return float((model(to_input(images)).argmax(1).numpy() == labels).mean())


def _weights_path(cache_dir: Path, dataset: str, role: str, s: TrainSettings) -> Path:
    spec = json.dumps({"format": WEIGHTS_FORMAT, "dataset": dataset, "role": role, **asdict(s)}, sort_keys=True)
    return Path(cache_dir) / f"{dataset}-{role}-{hashlib.blake2b(spec.encode(), digest_size=4).hexdigest()}.pt"


def _trained(build: Callable[[], nn.Module], path: Path | None, data: Digits, s: TrainSettings
             ) -> tuple[nn.Module, dict]:
    """The model `build` makes, with weights read from `path`, or trained on the clean train digits (from
    seed `s.seed`, without moving the caller's random state) and saved there."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = build()
        if path is not None and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["state"])
            model.eval()
            return model, {**saved["notes"], "trained_now": False}
        start = time.perf_counter()
        _fit(model, to_input(data.train_images), torch.as_tensor(data.train_labels), s)
    notes = {"train_seconds": round(time.perf_counter() - start, 2),
             "clean_held_out_accuracy": round(accuracy(model, data.test_images, data.test_labels), 4),
             "parameters": sum(p.numel() for p in model.parameters()), "settings": asdict(s)}
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({"state": model.state_dict(), "notes": notes}, tmp)
    return model, {**notes, "trained_now": True}


def trained_models(dataset: str = "mnist", cache_dir: str | Path | None = DEFAULT_CACHE, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> TrainedModels:
    """Edge and cloud models trained on `dataset`'s clean train split (read back from `cache_dir` when there;
    `cache_dir=None` trains without caching)."""
    data = load_digits_split(dataset, seed)
    notes, models = {}, {}
    for role, build in (("edge", edge_cnn), ("cloud", cloud_cnn)):
        s = SETTINGS[dataset][role]
        s = TrainSettings(s.epochs, s.batch, s.lr, seed)
        path = _weights_path(Path(cache_dir), dataset, role, s) if cache_dir is not None else None
        if progress and not (path and path.is_file()):
            progress(f"training the {role} model on clean {dataset} ({s.epochs} epochs)")
        models[role], notes[role] = _trained(lambda: build(data.num_classes), path, data, s)
    return TrainedModels(models["edge"], models["cloud"], data, notes)
