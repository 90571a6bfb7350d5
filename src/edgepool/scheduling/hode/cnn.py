"""The per-region recognizer: a small fully convolutional CNN trained here in seconds on real MNIST digits.

On a 28x28 crop it classifies one digit; run densely over a region it is the backbone pass a detector makes, so
its FLOPs grow with the region's area (`flops_per_pixel`, counted by `torch.utils.flop_counter`). Objects are
found in a region by thresholding and connected components; each is cropped, scaled to MNIST's 20x20-in-28x28
layout and classified. A component that touches the region's edge (not the frame's) may be a cut object.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

BRIGHT = 0.45      # digits are brighter than the dimmed photograph (<= 0.35 + noise)
MIN_AREA = 40      # px: smaller components are noise


class DigitCNN(nn.Module):
    """(N, 1, H, W) -> (N, 10, H/4 - 6, W/4 - 6) class scores; (N, 10, 1, 1) on 28x28 crops."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 10, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_cnn(x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 3) -> DigitCNN:
    """Adam on (N, 28, 28) digits in 0..1 with labels (N,); seeded, single-threaded-deterministic."""
    torch.manual_seed(seed)
    model = DigitCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]).flatten(1), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def classify(model: DigitCNN, crops: np.ndarray) -> np.ndarray:
    """(N, 28, 28) crops -> (N,) predicted digits."""
    if len(crops) == 0:
        return np.zeros(0, np.int64)
    return model(torch.from_numpy(crops[:, None].astype(np.float32))).flatten(1).argmax(1).numpy()


def flops_per_pixel(model: DigitCNN, height: int = 272, width: int = 480) -> float:
    """Forward FLOPs of the dense pass over a (height, width) region, per pixel (counted, not estimated)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, height, width))
    return counter.get_total_flops() / (height * width)


@dataclass
class Detection:
    """One object found in a region, in frame pixels: bounding box centre, area, whether it touches a cut."""

    cx: float
    cy: float
    area: int
    touches_cut: bool
    crop: np.ndarray  # (28, 28) float32


def _to_mnist(patch: np.ndarray) -> np.ndarray:
    """A digit's bounding-box patch (h, w) in 0..1 -> (28, 28): square, scaled to 20x20, centred like MNIST."""
    h, w = patch.shape
    side = max(h, w)
    sq = np.zeros((side, side), np.float32)
    sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = patch
    t = torch.from_numpy(sq)[None, None]
    small = nn.functional.interpolate(t, size=(20, 20), mode="area")[0, 0].numpy()
    out = np.zeros((28, 28), np.float32)
    out[4:24, 4:24] = small
    return out


def canonical(digits: np.ndarray, scale: int = 3) -> np.ndarray:
    """(N, 28, 28) MNIST digits in 0..1 -> (N, 28, 28) as `detect` would crop them from a frame (scaled up by
    `scale`, thresholded, boxed and rescaled), so the recognizer trains on what it will see."""
    out = np.empty_like(digits)
    for i, d in enumerate(digits):
        big = np.kron(d, np.ones((scale, scale), np.float32))
        ys, xs = np.nonzero(big > BRIGHT)
        if len(ys) == 0:
            out[i] = d
            continue
        val = np.clip((big - 0.35) / 0.65, 0.0, 1.0)
        out[i] = _to_mnist(val[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    return out


def detect(frame: np.ndarray, region: np.ndarray | None = None) -> list[Detection]:
    """Objects in `frame` (H, W) uint8 restricted to the pixel mask `region` (H, W) bool (None: whole frame)."""
    if region is None:
        y0, x0, img, inside = 0, 0, frame, None
    else:
        if not region.any():
            return []
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        inside = region[y0:y1, x0:x1]
        img = np.where(inside, frame[y0:y1, x0:x1], 0)
    val = np.clip((img.astype(np.float32) / 255.0 - 0.35) / 0.65, 0.0, 1.0)
    bright = img > int(BRIGHT * 255)
    labels, n = ndimage.label(ndimage.binary_dilation(bright, iterations=3))
    if n == 0:
        return []
    edge = None
    if inside is not None:  # region pixels within 3 px of the region's outside; beyond the frame counts as inside
        window = np.pad(region, 3, constant_values=True)[y0:y1 + 6, x0:x1 + 6]
        edge = inside & ~ndimage.binary_erosion(window, iterations=3)[3:-3, 3:-3]
    found = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = (labels[sl] == k) & bright[sl]
        area = int(comp.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(comp)
        by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch = np.where(labels[sl] == k, val[sl], 0.0)[by0:by1, bx0:bx1]  # soft edges kept, as in MNIST
        touches = bool(edge is not None and (edge[sl] & comp).any())
        found.append(Detection(cx=x0 + sl[1].start + (bx0 + bx1) / 2, cy=y0 + sl[0].start + (by0 + by1) / 2,
                               area=area, touches_cut=touches, crop=_to_mnist(patch)))
    return found


def match(detections: list[Detection], predicted: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per ground-truth box (n, 4) the predicted digit of its best detection (centre inside the box; one that
    does not touch a cut first, then the largest), or -1 when nothing was found."""
    out = np.full(len(boxes), -1)
    for j, (bx0, by0, bx1, by1) in enumerate(boxes):
        cand = [(not d.touches_cut, d.area, i) for i, d in enumerate(detections)
                if bx0 <= d.cx < bx1 and by0 <= d.cy < by1]
        if cand:
            out[j] = predicted[max(cand)[2]]
    return out
