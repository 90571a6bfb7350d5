"""Training the bottlenecks in the papers' two stages, on features and logits the teacher computes once.

Stage 1 trains the encoder and decoder on the teacher's features at the cut: BottleFit's head distillation
(reproduce them), Entropic Student's rate-distortion (reproduce them at a rate the prior charges for,
`loss = MSE + beta * bits per image / pixels`). Stage 2 freezes the head and the encoder (and the prior),
so what the decoder receives is exactly what the bitstream will carry (BottleFit: the 8-bit quantized
code; Entropic Student: the rounded latent), and fine-tunes decoder and tail with knowledge distillation
from the teacher's logits (plus the labels, where the task has them). Batch-norm statistics stay frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgepool.split.backbone import head_and_tail, predict, to_input
from edgepool.split.bottleneck import fit_transform
from edgepool.split.data import ImageSet
from edgepool.split.network import BottleneckSpec, SplitNetwork

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class TrainConfig:
    head_epochs: int = 12
    tail_epochs: int = 2
    batch: int = 32
    head_lr: float = 5e-4
    tail_lr: float = 1e-4
    temperature: float = 1.0
    patch: int = 32  # stage 1 trains on random patches of the cut's features (convolutions: same weights)
    seed: int = 0


@dataclass
class TeacherCache:
    """What the teacher computes once for a training set: inputs, features at the cut, logits."""

    inputs: torch.Tensor  # N x 3 x S x S
    features: torch.Tensor  # N x C x H x W at the cut
    logits: torch.Tensor  # N x classes
    labels: torch.Tensor  # N: the true labels where known, else the teacher's top-1


def teacher_cache(teacher: nn.Module, images: ImageSet, side: int, cut: int,
                  inputs: torch.Tensor | None = None) -> TeacherCache:
    x = inputs if inputs is not None else to_input(images.images, side)
    head, _ = head_and_tail(teacher, cut)
    logits = predict(teacher, x)
    labels = torch.as_tensor(images.labels) if images.labels is not None else logits.argmax(1)
    return TeacherCache(x, predict(head, x), logits, labels)


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n, batch):
        yield torch.as_tensor(order[i:i + batch])


def train_split(teacher: nn.Module, spec: BottleneckSpec, cache: TeacherCache, config: TrainConfig | None = None,
                progress: Progress | None = None) -> SplitNetwork:
    """A trained split network for `spec` (a copy of the teacher is fine-tuned; the teacher is untouched)."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = SplitNetwork(teacher, spec)
    bottleneck, n = network.bottleneck, len(cache.inputs)
    pixels = cache.inputs.shape[-1] * cache.inputs.shape[-2]
    report = progress or (lambda *_: None)

    # stage 1: encoder + decoder (+ prior) on the cached features at the cut, from a transform code
    fit_transform(bottleneck.encoder, bottleneck.decoder, cache.features, spec.step if spec.method == "entropic"
                  else 1.0)
    if hasattr(bottleneck, "fit_range"):
        bottleneck.fit_range(cache.features)
    bottleneck.train()
    optimizer = torch.optim.Adam(bottleneck.parameters(), lr=config.head_lr)
    steps = config.head_epochs * -(-n // config.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    step = 0
    for _ in range(config.head_epochs):
        for idx in _batches(n, config.batch, rng):
            target = _patch(cache.features[idx], config.patch, rng)
            reconstructed, bits = bottleneck(target)
            loss = F.mse_loss(reconstructed, target)
            if bits is not None:
                loss = loss + spec.beta * bits / pixels
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            report("stage 1: bottleneck", step, steps)
    bottleneck.eval()
    if hasattr(bottleneck, "fit_coder"):
        bottleneck.fit_coder(cache.features)

    # stage 2: decoder + tail with distillation, on exactly what the decoder will receive
    codes = _decoder_inputs(bottleneck, cache.features)
    decoder = bottleneck.decoder
    for p in network.parameters():
        p.requires_grad_(False)
    trainable = list(decoder.parameters()) + list(network.tail.parameters())
    for p in trainable:
        p.requires_grad_(True)
    network.eval()  # batch-norm statistics frozen; dropout off
    optimizer = torch.optim.Adam(trainable, lr=config.tail_lr)
    steps, step = config.tail_epochs * -(-n // config.batch), 0
    t = config.temperature
    for _ in range(config.tail_epochs):
        for idx in _batches(n, config.batch, rng):
            logits = network.tail(decoder(codes[idx]))
            distill = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(cache.logits[idx] / t, 1),
                               reduction="batchmean") * t * t
            loss = distill + F.cross_entropy(logits, cache.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            report("stage 2: decoder + tail", step, steps)
    for p in network.parameters():
        p.requires_grad_(True)
    return network.eval()


def _patch(features: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = features.shape[-2:]
    if size >= min(h, w):
        return features
    y, x = 2 * rng.integers(0, (h - size) // 2 + 1), 2 * rng.integers(0, (w - size) // 2 + 1)  # even: stride 2
    return features[..., y:y + size, x:x + size]


@torch.no_grad()
def _decoder_inputs(bottleneck: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """What the decoder gets at inference for each training feature: the dequantized/rounded code."""
    out = []
    for i in range(0, len(features), 64):
        z = bottleneck.encoder(features[i:i + 64])
        if bottleneck.method == "bottlefit":
            z = torch.stack([bottleneck.quantizer.dequantize(bottleneck.quantizer.quantize(v)) for v in z])
        else:
            z = bottleneck.quantize(z)
        out.append(z)
    return torch.cat(out)


def finetune_classifier(model: nn.Module, images: ImageSet, side: int, epochs: int = 2, batch: int = 64,
                        lr: float = 1e-3, seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """Fine-tune a whole network on labelled images (MNIST's unsplit reference model)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = to_input(images.images, side), torch.as_tensor(images.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps, step = epochs * -(-len(x) // batch), 0
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in _batches(len(x), batch, rng):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress:
                progress("fine-tune the unsplit model", step, steps)
    return model.eval()
