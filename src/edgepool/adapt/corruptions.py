"""MNIST-C / ImageNet-C-style corruptions of grey digits: the distribution shifts the edge meets.

Every corruption maps uint8 images [N,H,W] to uint8 images [N,H,W] at a severity 1..5, drawing any randomness
from the numpy Generator it is given, so a stream is the same every time it is built from the same seed.
Strengths follow ImageNet-C's five-level ladders, scaled for digits in [0, 1]; sizes (blur) scale with the side
(at least half the 28-pixel size, so 8 x 8 digits still blur visibly at severity 1).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from edgepool.errors import SpecError

SEVERITIES = (1, 2, 3, 4, 5)
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]  # floats [N,H,W] in [0,1] -> same


def _gaussian_noise(x, s, rng):
    std = (0.1, 0.2, 0.3, 0.45, 0.6)[s - 1]
    return x + rng.normal(0.0, std, size=x.shape)


def _shot_noise(x, s, rng):
    photons = (60.0, 25.0, 12.0, 5.0, 3.0)[s - 1]
    return rng.poisson(x * photons) / photons


def _impulse_noise(x, s, rng):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


def _gaussian_blur(x, s, rng):
    sigma = (0.5, 0.8, 1.1, 1.5, 2.0)[s - 1] * max(x.shape[1] / 28.0, 0.5)  # 8 x 8: half, or it rounds away
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="constant")


def _contrast(x, s, rng):
    keep = (0.4, 0.3, 0.2, 0.1, 0.05)[s - 1]
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * keep + mean


def _brightness(x, s, rng):
    return x + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]


def _rotate(x, s, rng):
    limit = (10.0, 20.0, 30.0, 45.0, 60.0)[s - 1]
    angles = rng.uniform(limit / 2, limit, size=len(x)) * rng.choice((-1.0, 1.0), size=len(x))
    return np.stack([ndimage.rotate(img, a, reshape=False, order=1, mode="constant") for img, a in zip(x, angles)])


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur, "contrast": _contrast, "brightness": _brightness, "rotate": _rotate,
}
NAMES = ("clean",) + tuple(CORRUPTIONS)


def check(name: str, severity: int) -> None:
    """Raise SpecError unless `name` and `severity` name a corruption (severity is ignored for "clean")."""
    if name not in NAMES:
        raise SpecError(field="corruption", value=name, accepted=", ".join(NAMES))
    if name != "clean" and (isinstance(severity, bool) or severity not in SEVERITIES):
        raise SpecError(field="severity", value=severity, accepted="1, 2, 3, 4 or 5")


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """`images` uint8 [N,H,W] shifted by corruption `name` at `severity`; uint8 [N,H,W], a new array."""
    check(name, severity)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise SpecError(field="images", value=f"{images.dtype} array of shape {images.shape}",
                        accepted="uint8 array [N,H,W]")
    if name == "clean":
        return images.copy()
    x = images.astype(np.float64) / 255.0  # [N,H,W] in [0,1]
    out = CORRUPTIONS[name](x, int(severity), rng)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
