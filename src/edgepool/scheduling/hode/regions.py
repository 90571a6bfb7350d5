"""Hode's region partition: a spatio-temporal motion filter over a grid of blocks, then a split into k regions.

The filter differences consecutive frames and marks a block when enough of its pixels changed; it keeps a
changed block only when its 3x3 neighbourhood changed in at least `persist` of the last `window` differences
(spatio-temporal persistence: an object moving across blocks keeps changing next door, while a lamp that blinks
for one frame changes only twice, on and off); kept blocks are dilated by one block so an object that straddles
a block edge stays whole. The split cuts the moving blocks into k vertical strips holding given shares of the moving
area. A cut through a moving object would halve it, so (when `handle`) a cut first moves to the nearest column
gap within `snap` columns (an object-aligned cut) and, where none is near, the region left of the cut also
takes the crossing objects' blocks `overlap` columns past it (an overlap margin as wide as an object).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from edgepool.errors import SpecError


@dataclass(frozen=True)
class FilterConfig:
    """Block size (px), per-pixel change threshold (0..1 of full scale), share of a block's pixels that must
    change, persistence (`persist` of the last `window` differences), and the dilation in blocks."""

    block: int = 40
    pixel_threshold: float = 0.12
    block_fraction: float = 0.01
    window: int = 3
    persist: int = 3
    dilate: int = 1

    def check(self, height: int, width: int) -> None:
        if self.block < 4 or height % self.block or width % self.block:
            raise SpecError("filter.block", self.block, f"a size >= 4 px that divides {height} and {width}")
        if not 1 <= self.persist <= self.window:
            raise SpecError("filter.persist", self.persist, f"1..window ({self.window})")


def block_changes(prev: np.ndarray, cur: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """(H, W) uint8 frames -> (H/b, W/b) bool: blocks where more than `block_fraction` of pixels changed."""
    diff = np.abs(cur.astype(np.int16) - prev.astype(np.int16)) > int(cfg.pixel_threshold * 255)
    h, w, b = cur.shape[0] // cfg.block, cur.shape[1] // cfg.block, cfg.block
    return diff.reshape(h, b, w, b).mean(axis=(1, 3)) > cfg.block_fraction


def motion_masks(frames: np.ndarray, cfg: FilterConfig = FilterConfig()) -> np.ndarray:
    """(T, H, W) frames -> (T, H/b, W/b) bool moving blocks. Frames before the window fills have no history and
    are marked entirely moving (the filter can skip nothing yet); callers start after `cfg.window` frames."""
    T, H, W = frames.shape
    cfg.check(H, W)
    grid = (T, H // cfg.block, W // cfg.block)
    changes = np.zeros(grid, bool)
    for t in range(1, T):
        changes[t] = block_changes(frames[t - 1], frames[t], cfg)
    near = ndimage.binary_dilation(changes, np.ones((1, 3, 3), bool))  # changed here or next door, per diff
    masks = np.ones(grid, bool)
    kernel = np.ones((2 * cfg.dilate + 1,) * 2, bool)
    for t in range(cfg.window, T):
        persistent = changes[t] & (near[t - cfg.window + 1:t + 1].sum(0) >= cfg.persist)
        masks[t] = ndimage.binary_dilation(persistent, kernel) if cfg.dilate else persistent
    return masks


@dataclass
class Split:
    """k regions of one frame: `blocks[i]` (gh, gw) bool are node i's blocks (overlap included), `cuts` the
    column boundaries after snapping, `crossings` the cuts still through a moving object (overlap used)."""

    blocks: np.ndarray
    cuts: list[int]
    crossings: int
    overlap_blocks: int

    @property
    def counts(self) -> np.ndarray:
        """Blocks per node, (k,)."""
        return self.blocks.reshape(len(self.blocks), -1).sum(1)


def _crosses(mask: np.ndarray, b: int) -> bool:
    return 0 < b < mask.shape[1] and bool((mask[:, b - 1] & mask[:, b]).any())


def split_regions(mask: np.ndarray, shares: np.ndarray, *, handle: bool = True, snap: int = 2,
                  overlap: int = 3) -> Split:
    """Cut the moving blocks of `mask` (gh, gw) into len(shares) strips of about those shares of moving area."""
    shares = np.asarray(shares, float)
    if shares.ndim != 1 or len(shares) < 1 or (shares < 0).any() or shares.sum() <= 0:
        raise SpecError("shares", shares.tolist(), "k >= 1 non-negative numbers with a positive sum")
    k, (gh, gw) = len(shares), mask.shape
    cum = np.concatenate([[0], np.cumsum(mask.sum(0))])  # moving blocks left of each boundary, (gw + 1,)
    targets = np.cumsum(shares / shares.sum())[:-1] * cum[-1]
    cuts = [int(np.argmin(np.abs(cum - t))) for t in targets]
    crossings = 0
    for i, b in enumerate(cuts):
        lo = cuts[i - 1] if i else 0
        hi = cuts[i + 1] if i + 1 < len(cuts) else gw
        if handle and _crosses(mask, b):
            near = [c for d in range(1, snap + 1) for c in (b - d, b + d) if lo <= c <= hi and not _crosses(mask, c)]
            if near:
                cuts[i] = b = near[0]
        cuts[i] = b = max(b, lo)
        crossings += _crosses(mask, b)
    bounds = [0] + cuts + [gw]
    blocks = np.zeros((k, gh, gw), bool)
    for i in range(k):
        blocks[i, :, bounds[i]:bounds[i + 1]] = mask[:, bounds[i]:bounds[i + 1]]
    extra = 0
    if handle and crossings:
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        for i, b in enumerate(cuts):
            if not _crosses(mask, b):
                continue
            cross = np.intersect1d(labels[:, b - 1][mask[:, b - 1]], labels[:, b][mask[:, b]])
            band = np.zeros_like(mask)
            band[:, b:min(b + overlap, gw)] = True
            add = band & np.isin(labels, cross) & ~blocks[i]
            blocks[i] |= add
            extra += int(add.sum())
    return Split(blocks=blocks, cuts=cuts, crossings=crossings, overlap_blocks=extra)


def pixel_mask(blocks: np.ndarray, block: int) -> np.ndarray:
    """(gh, gw) bool blocks -> (gh*b, gw*b) bool pixels."""
    return np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)
