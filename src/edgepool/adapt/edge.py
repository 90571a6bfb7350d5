"""The edge side: a model that only runs forward, a selector that picks what to upload, and the on-edge
EATA baseline that backpropagates by itself (what CEMA spares a device that cannot).

All edge state lives in these objects; between them and the cloud travel only `messages` bytes, so the same
objects run in-process (`run`) or in two processes over a link.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgepool.adapt.models import batch_statistics, load_norm_state, norm_params, to_input
from edgepool.adapt.selection import Selector, entropy
from edgepool.errors import SpecError


@dataclass
class Served:
    """One served batch: predictions int64 [b], the uploads uint8 [k,H,W] picked by the selector, every sample's
    entropy (nats, float64 [b]) and the upload mask bool [b] (k = mask.sum())."""

    predictions: np.ndarray
    upload: np.ndarray
    entropies: np.ndarray
    uploaded: np.ndarray


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) == 0:
        raise SpecError(field="images", value=f"{images.dtype} array of shape {images.shape}",
                        accepted="a non-empty uint8 array [b,H,W]")
    return images


class Edge:
    """A forward-only edge: eval-mode model (no autograd, parameters frozen) and a selector. Its model changes
    only through `apply`, with normalization state the cloud computed. With `batch_stats` BatchNorm normalizes
    each served batch with that batch's own statistics (still forward only; see `models.batch_statistics`),
    so only the affine parameters need to come from the cloud; without it, with the running statistics (the
    model as deployed)."""

    def __init__(self, model: nn.Module, selector: Selector, batch_stats: bool = False):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.selector = selector
        self.batch_stats = batch_stats

    def serve(self, images: np.ndarray) -> Served:
        """Predict `images` uint8 [b,H,W] (no_grad) and pick which of them to upload."""
        images = check_images(images)
        normalization = batch_statistics(self.model) if self.batch_stats else contextlib.nullcontext()
        with torch.no_grad(), normalization:
            logits = self.model(to_input(images))  # [b,C]
            ent = entropy(logits).double().numpy()
        predictions = logits.argmax(1).numpy().astype(np.int64)
        mask = np.asarray(self.selector.select(ent, predictions), dtype=bool)
        return Served(predictions, images[mask], ent, mask)

    def apply(self, state: dict[str, torch.Tensor]) -> None:
        """Load the cloud's normalization state (affine parameters and running statistics) into the model."""
        load_norm_state(self.model, state)


class EataEdge:
    """On-edge EATA (Niu et al., 2022): the edge adapts its own BatchNorm affine parameters by entropy
    minimisation on reliable (entropy < e0 x ln C) and non-redundant (cosine similarity of the prediction to
    the moving-average prediction below `redundancy`) samples, weighted by 1/exp(entropy - E0), with the Fisher
    regulariser that keeps important parameters near their clean values. BatchNorm uses the batch's statistics
    (as Tent and EATA do). Predictions are the forward pass made before that batch's update. Uploads nothing."""

    def __init__(self, model: nn.Module, num_classes: int, lr: float = 5e-3, e0: float = 0.4,
                 redundancy: float = 0.5, fisher_images: np.ndarray | None = None, fisher_weight: float = 50.0):
        self.model = model.train()  # BatchNorm on batch statistics
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.params = norm_params(self.model)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=0.9)
        self.e0 = e0 * math.log(num_classes)
        self.redundancy = redundancy
        self.average: torch.Tensor | None = None  # moving average of selected probabilities [C]
        self.anchor = [p.detach().clone() for p in self.params]
        self.fisher = self._fisher(fisher_images) if fisher_images is not None else None
        self.fisher_weight = fisher_weight

    def _fisher(self, images: np.ndarray) -> list[torch.Tensor]:
        """Diagonal Fisher of the affine parameters on clean images: mean squared gradient of the cross-entropy to
        the model's own predictions, in eval mode (the clean model as trained)."""
        self.model.eval()
        fisher = [torch.zeros_like(p) for p in self.params]
        batches = to_input(check_images(images)).split(64)
        for x in batches:
            logits = self.model(x)
            loss = nn.functional.cross_entropy(logits, logits.argmax(1).detach())
            grads = torch.autograd.grad(loss, self.params)
            for f, g in zip(fisher, grads):
                f += g.detach() ** 2 / len(batches)
        self.model.train()
        return fisher

    def serve(self, images: np.ndarray) -> Served:
        """Predict `images` uint8 [b,H,W], then take one EATA step on the selected samples; uploads nothing."""
        images = check_images(images)
        logits = self.model(to_input(images))  # [b,C], batch statistics
        ent = entropy(logits)  # [b]
        probs = logits.softmax(1).detach()
        keep = ent.detach() < self.e0
        if self.average is not None:
            keep &= nn.functional.cosine_similarity(probs, self.average[None], dim=1) < self.redundancy
        if keep.any():
            chosen = probs[keep].mean(0)
            self.average = chosen if self.average is None else 0.9 * self.average + 0.1 * chosen
            weight = torch.exp(-(ent[keep].detach() - self.e0))
            loss = (ent[keep] * weight).mean()
            if self.fisher is not None:
                loss = loss + self.fisher_weight * sum((f * (p - a) ** 2).sum()
                                                       for f, p, a in zip(self.fisher, self.params, self.anchor))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        b = len(images)
        return Served(logits.argmax(1).detach().numpy().astype(np.int64), images[:0],
                      ent.detach().double().numpy(), np.zeros(b, dtype=bool))

    def apply(self, state: dict[str, torch.Tensor]) -> None:
        """Load normalization state (EATA gets none from a cloud; here for the same API as `Edge`)."""
        load_norm_state(self.model, state)


