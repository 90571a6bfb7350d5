"""A test stream: phases of held-out digits under one corruption each, arriving one after another.

The edge sees the stream in order and never the labels; labels only score its predictions. Each phase draws its
digits from the held-out split (a fresh permutation per phase, repeating the split when a phase is longer), so no
stream digit was ever trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepool.adapt.corruptions import check, corrupt
from edgepool.adapt.data import Digits, load_digits_split
from edgepool.errors import SpecError


@dataclass(frozen=True)
class Phase:
    """`n` held-out digits under `corruption` at `severity` (1..5; ignored for "clean")."""

    corruption: str
    severity: int
    n: int

    @property
    def label(self) -> str:
        return "clean" if self.corruption == "clean" else f"{self.corruption} {self.severity}"


# Shifts that cut a clean-trained MNIST CNN's accuracy sharply (to 11-54%, as in MNIST-C) at severities where the
# digits stay legible (re-estimating BatchNorm statistics alone recovers 60-94% there); rotation, which no
# normalization change undoes, and the harshest severities, which no method recovers, are left out by default.
DEFAULT_SHIFTS = (("gaussian_noise", 2), ("contrast", 2), ("impulse_noise", 3), ("brightness", 3),
                  ("shot_noise", 5), ("gaussian_blur", 3))


def default_phases(n_per_phase: int = 1000, shifts=DEFAULT_SHIFTS) -> list[Phase]:
    """One phase per (corruption, severity) of `shifts`, each `n_per_phase` digits long."""
    return [Phase(name, severity, n_per_phase) for name, severity in shifts]


@dataclass
class Stream:
    """The stream in arrival order: images uint8 [N,H,W], labels int64 [N], phase index int64 [N]."""

    images: np.ndarray
    labels: np.ndarray
    phase: np.ndarray
    phases: list[Phase]
    num_classes: int
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, size: int):
        """(start, stop) of consecutive batches of `size` samples (the last may be shorter)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SpecError(field="batch", value=size, accepted="a whole number >= 1")
        return [(i, min(i + size, len(self))) for i in range(0, len(self), size)]


def build_stream(data: Digits | str, phases: list[Phase] | None = None, seed: int = 0) -> Stream:
    """Phases of `data`'s held-out digits (a `Digits` or a dataset name), corrupted with a seeded Generator."""
    if isinstance(data, str):
        data = load_digits_split(data, seed)
    phases = default_phases() if phases is None else list(phases)
    if not phases:
        raise SpecError(field="phases", value=phases, accepted="at least one Phase")
    rng = np.random.default_rng(seed)
    images, labels, index = [], [], []
    for k, p in enumerate(phases):
        check(p.corruption, p.severity)
        if isinstance(p.n, bool) or not isinstance(p.n, int) or p.n < 1:
            raise SpecError(field=f"phases[{k}].n", value=p.n, accepted="a whole number >= 1")
        reps = -(-p.n // len(data.test_labels))
        pick = np.concatenate([rng.permutation(len(data.test_labels)) for _ in range(reps)])[:p.n]
        images.append(corrupt(data.test_images[pick], p.corruption, p.severity, rng))  # [n,H,W]
        labels.append(data.test_labels[pick])
        index.append(np.full(p.n, k, dtype=np.int64))
    return Stream(np.concatenate(images), np.concatenate(labels), np.concatenate(index), phases,
                  data.num_classes, f"{data.source}; held-out digits only")
