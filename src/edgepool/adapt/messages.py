"""The bytes between edge and cloud: uploads up, normalization state down (safetensors, a real wire format).

What the link carries is exactly these bytes, so their lengths are the traffic a run reports.
"""
from __future__ import annotations

import numpy as np
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from safetensors.torch import load as torch_load
from safetensors.torch import save as torch_save

from edgepool.errors import SpecError


def encode_upload(images: np.ndarray) -> bytes:
    """uint8 images [k,H,W] (k may be 0) -> bytes: a safetensors file with one tensor, "images"."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise SpecError(field="images", value=f"{images.dtype} array of shape {images.shape}",
                        accepted="uint8 array [k,H,W]")
    return np_save({"images": np.ascontiguousarray(images)})


def decode_upload(data: bytes) -> np.ndarray:
    """bytes from `encode_upload` -> uint8 images [k,H,W]."""
    try:
        images = np_load(bytes(data))["images"]
    except Exception as exc:  # safetensors raises its own error types on bad headers
        raise SpecError(field="upload", value=f"{len(data)} bytes", accepted="bytes made by encode_upload") from exc
    if images.dtype != np.uint8 or images.ndim != 3:
        raise SpecError(field="upload", value=f"{images.dtype} array of shape {images.shape}",
                        accepted="uint8 array [k,H,W]")
    return images


def encode_state(state: dict[str, torch.Tensor]) -> bytes:
    """Normalization state {"layer.key": tensor} -> bytes (safetensors; tensors made contiguous CPU copies)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(field="state", value=type(state).__name__, accepted="dict[str, torch.Tensor]")
    return torch_save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def decode_state(data: bytes) -> dict[str, torch.Tensor]:
    """bytes from `encode_state` -> {"layer.key": tensor}."""
    try:
        return dict(torch_load(bytes(data)))
    except Exception as exc:
        raise SpecError(field="state", value=f"{len(data)} bytes", accepted="bytes made by encode_state") from exc
