"""Which served samples the edge uploads: CEMA's two exclusions, and the baselines' rules.

CEMA uploads a sample only if it is neither unreliable (prediction entropy above E_max: its pseudo-label is
likely wrong and would mislead adaptation) nor low-informative (entropy below E_min: the model is already sure,
so the gradient it gives is near zero and the bytes are wasted). E_max starts at `e_max_init` x ln C and follows
a moving average of each batch's `e_max_quantile` entropy quantile, inside [`e_max_low`, `e_max_high`] x ln C:
when a new shift makes every prediction uncertain the bound rises, so the edge still uploads its relatively
reliable samples and can recover; as the model adapts and grows sure the bound tightens again and unreliable
samples are left out. (The paper's own schedule
differs in detail; this rule is ours, with the same purpose.)

One addition of ours: a clean-trained model can collapse under a shift (noise, brightness), predicting one or two
classes for everything with near-zero entropy. Low entropy then means "confidently wrong", not "already known",
so when the histogram of a batch's predicted classes has entropy below `collapse` x ln(min(C, b)) the E_min
exclusion is suspended for that batch. The edge sees this in its forward pass alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from edgepool.errors import SpecError


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) [b,C] -> [b]; differentiable."""
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


class Selector(Protocol):
    """Chooses uploads from one served batch's entropies (nats, [b]) -> bool mask [b]."""

    name: str

    def select(self, entropies: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray: ...


def _fraction(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError(field=name, value=value, accepted=f"a number in [{low}, {high}]")
    return float(value)


@dataclass
class CemaSelector:
    """CEMA's sample exclusion with a dynamic E_max (see the module docstring); thresholds in units of ln C."""

    num_classes: int
    e_max_init: float = 0.4
    e_min: float = 0.05
    e_max_low: float = 0.2
    e_max_high: float = 1.0
    e_max_quantile: float = 0.5  # E_max moves toward this entropy quantile of each batch
    momentum: float = 0.5  # weight of the old E_max in each update
    collapse: float = 0.5  # below this normalized entropy of the predicted-class histogram, E_min is suspended
    name: str = "cema"
    e_max_history: list[float] = field(default_factory=list)  # E_max (nats) used for each batch
    collapsed: list[bool] = field(default_factory=list)  # per batch: was E_min suspended

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise SpecError(field="num_classes", value=self.num_classes, accepted="a whole number >= 2")
        for key in ("e_max_init", "e_min", "e_max_low", "e_max_high", "e_max_quantile", "momentum", "collapse"):
            _fraction(key, getattr(self, key))
        if not self.e_min < self.e_max_low <= self.e_max_init <= self.e_max_high:
            raise SpecError(field="thresholds", value=(self.e_min, self.e_max_low, self.e_max_init, self.e_max_high),
                            accepted="e_min < e_max_low <= e_max_init <= e_max_high (fractions of ln C)")
        self.scale = math.log(self.num_classes)
        self.e_max = self.e_max_init * self.scale  # nats

    @property
    def e_min_nats(self) -> float:
        return self.e_min * self.scale

    def select(self, entropies: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """Upload mask [b] under the current thresholds; then E_max moves toward this batch's entropy quantile.
        `predictions` (int [b]) lets the collapse check see the batch's predicted classes."""
        e = np.asarray(entropies, dtype=np.float64)
        self.e_max_history.append(self.e_max)
        collapsed = predictions is not None and self.is_collapsed(np.asarray(predictions))
        self.collapsed.append(collapsed)
        mask = (e < self.e_max) & ((e > self.e_min_nats) | collapsed)
        if len(e):
            target = self.momentum * self.e_max + (1 - self.momentum) * float(np.quantile(e, self.e_max_quantile))
            self.e_max = float(np.clip(target, self.e_max_low * self.scale, self.e_max_high * self.scale))
        return mask

    def is_collapsed(self, predictions: np.ndarray) -> bool:
        """True when the batch's predicted classes concentrate on a few (histogram entropy below the bound)."""
        if len(predictions) < 2:
            return False
        counts = np.bincount(predictions, minlength=self.num_classes) / len(predictions)
        h = -sum(c * math.log(c) for c in counts if c > 0)
        return h < self.collapse * math.log(min(self.num_classes, len(predictions)))


@dataclass
class AllSelector:
    """Uploads every sample (the upload-everything baseline)."""

    name: str = "upload-all"

    def select(self, entropies: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        return np.ones(len(entropies), dtype=bool)


@dataclass
class NoneSelector:
    """Uploads nothing (no adaptation, or on-edge adaptation)."""

    name: str = "none"

    def select(self, entropies: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        return np.zeros(len(entropies), dtype=bool)


@dataclass
class RandomSelector:
    """Uploads each sample with probability `p`, independently (a seeded Generator): selection without entropy."""

    p: float
    seed: int = 0
    name: str = "random"

    def __post_init__(self):
        _fraction("p", self.p)
        self.rng = np.random.default_rng(self.seed)

    def select(self, entropies: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        return self.rng.random(len(entropies)) < self.p
