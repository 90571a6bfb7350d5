"""The baselines that cross the link: the input image coded with Pillow, or the features at the cut
quantized to `bits` bits per value and entropy-coded with a fixed per-channel table (no bottleneck).

Both return real bytes, so their sizes compare directly with the learned bottlenecks' bitstreams.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edgepool.errors import SpecError
from edgepool.split.bitstream import BitstreamError, SymbolCoder, decode_tensor, encode_tensor
from edgepool.split.options import INPUT_CODECS

_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}


@dataclass(frozen=True)
class InputCodec:
    """The offload baseline: the (optionally resized) input image in a standard format.

    `quality` is Pillow's 1..100 for JPEG and WebP (lossy) and must be None for PNG and lossless WebP.
    `resolution` resizes the square input to that side before coding; None keeps its size.
    """

    format: str
    quality: int | None = None
    resolution: int | None = None
    lossless: bool = False  # WebP's lossless mode (the strongest lossless baseline here)

    def __post_init__(self) -> None:
        if self.format not in INPUT_CODECS:
            raise SpecError(field="format", value=self.format, accepted=", ".join(INPUT_CODECS))
        if self.lossless and self.format != "webp":
            raise SpecError(field="lossless", value=True, accepted="only with webp (png is always lossless)")
        if self.format == "png" or self.lossless:
            if self.quality is not None:
                raise SpecError(field="quality", value=self.quality, accepted="None for lossless png or webp")
        elif isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise SpecError(field="quality", value=self.quality, accepted=f"an integer 1..100 for {self.format}")
        if self.resolution is not None and (isinstance(self.resolution, bool) or not isinstance(self.resolution, int)
                                            or self.resolution < 1):
            raise SpecError(field="resolution", value=self.resolution, accepted="a positive integer or None")

    @property
    def level(self) -> str:
        """The option's level string: "q75" for lossy formats, "" for PNG."""
        if self.lossless:
            return "lossless"
        return "" if self.quality is None else f"q{self.quality}"

    def encode(self, image: np.ndarray) -> bytes:
        """Code a uint8 H x W x 3 (or H x W) image; the bytes are a standard JPEG/WebP/PNG file."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise SpecError(field="image", value=f"{image.dtype} array of shape {image.shape}",
                            accepted="uint8 H x W x 3 or H x W")
        pil = Image.fromarray(image)
        if self.resolution is not None and pil.size != (self.resolution, self.resolution):
            pil = pil.resize((self.resolution, self.resolution), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        if self.format == "png":
            pil.save(buf, format="PNG", optimize=True)
        elif self.lossless:
            pil.save(buf, format="WEBP", lossless=True)
        else:
            pil.save(buf, format=_PIL_FORMAT[self.format], quality=self.quality)
        return buf.getvalue()

    def decode(self, data: bytes, channels: int | None = None) -> np.ndarray:
        """Decode to uint8: H x W for a grayscale file, else H x W x 3; `channels` (1 or 3) forces one.

        WebP always stores colour, so a grayscale input comes back H x W x 3 unless `channels=1`.
        """
        if channels not in (None, 1, 3):
            raise SpecError(field="channels", value=channels, accepted="None, 1 or 3")
        try:
            with Image.open(io.BytesIO(data)) as pil:
                if pil.format != _PIL_FORMAT[self.format]:
                    raise BitstreamError(f"expected a {self.format} image, got {pil.format or 'unknown format'}")
                if channels == 1 or (channels is None and pil.mode in ("L", "I;16", "1")):
                    pil = pil.convert("L")
                else:
                    pil = pil.convert("RGB")
                return np.asarray(pil, dtype=np.uint8).copy()
        except BitstreamError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise BitstreamError(f"{self.format} image could not be decoded ({exc})") from None


@dataclass(eq=False)
class FeatureQuantizer:
    """The "features at the cut, quantized to `bits` bits, no bottleneck" baseline.

    `fit` learns a per-channel clipping range [low, high] and a per-channel symbol table from training
    features; both sides hold the fitted quantizer, so only the coded symbols cross the link.
    """

    bits: int = 8
    low: np.ndarray | None = field(default=None, repr=False)
    high: np.ndarray | None = field(default=None, repr=False)
    coder: SymbolCoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise SpecError(field="bits", value=self.bits, accepted="an integer 1..16")

    @property
    def kind(self) -> str:
        return f"feature{self.bits}"

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    def _check_fitted(self, coder: bool = True) -> None:
        if self.low is None or self.high is None or (coder and self.coder is None):
            raise RuntimeError("FeatureQuantizer is not fitted: call fit() or load_state_dict() first")

    def _step(self) -> np.ndarray:
        """Per-channel step; a constant channel gets step 1 so it quantizes to 0 and back to its value."""
        span = self.high - self.low
        return np.where(span > 0, span / (self.levels - 1), 1.0)

    def fit(self, features: torch.Tensor) -> "FeatureQuantizer":
        """Per-channel min/max of N x C x H x W training features, then a symbol table of their codes."""
        x = torch.as_tensor(features).detach().to(torch.float64).cpu()
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"training features must be N x C x ..., got shape {tuple(x.shape)}")
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.low = per_channel.min(dim=1).values.numpy()
        self.high = per_channel.max(dim=1).values.numpy()
        self.coder = None
        symbols = np.moveaxis(self.quantize(x.transpose(0, 1)), 0, 1)  # quantize wants channels first
        self.coder = SymbolCoder.fit(symbols, low=0, K=self.levels)
        return self

    def quantize(self, feature: torch.Tensor) -> np.ndarray:
        """The integer symbols (C x H x W, int32) for one feature map, clamped to the fitted range."""
        self._check_fitted(coder=False)
        x = torch.as_tensor(feature).detach().to(torch.float64).cpu().numpy()
        if x.ndim < 1 or x.shape[0] != len(self.low):
            raise ValueError(f"feature must have {len(self.low)} channels first, got shape {x.shape}")
        shape = (-1,) + (1,) * (x.ndim - 1)
        q = np.rint((x - self.low.reshape(shape)) / self._step().reshape(shape))
        return np.clip(q, 0, self.levels - 1).astype(np.int32)

    def dequantize(self, symbols: np.ndarray) -> torch.Tensor:
        """float32 values at the centres of the symbols' steps."""
        self._check_fitted(coder=False)
        s = np.asarray(symbols, dtype=np.float64)
        shape = (-1,) + (1,) * (s.ndim - 1)
        return torch.from_numpy((self.low.reshape(shape) + s * self._step().reshape(shape)).astype(np.float32))

    def encode(self, feature: torch.Tensor) -> bytes:
        """Quantize one C x H x W feature map and entropy-code it into a framed bitstream."""
        self._check_fitted()
        return encode_tensor(self.quantize(feature), self.coder, self.kind)

    def decode(self, data: bytes) -> torch.Tensor:
        """The dequantized C x H x W float32 feature map from `encode`'s bytes."""
        self._check_fitted()
        symbols, _ = decode_tensor(data, self.coder, self.kind)
        return self.dequantize(symbols)

    def state_dict(self) -> dict:
        """Plain numpy arrays and ints, for torch.save / np.savez."""
        self._check_fitted()
        return {"bits": self.bits, "low": self.low.copy(), "high": self.high.copy(),
                "probabilities": self.coder.probabilities.copy()}

    def load_state_dict(self, state: dict) -> "FeatureQuantizer":
        bits = int(state["bits"])
        if bits != self.bits:
            raise ValueError(f"state is for {bits}-bit quantization, this quantizer is {self.bits}-bit")
        self.low = np.asarray(state["low"], dtype=np.float64)
        self.high = np.asarray(state["high"], dtype=np.float64)
        self.coder = SymbolCoder(low=0, probabilities=np.asarray(state["probabilities"]))
        if self.coder.probabilities.shape != (len(self.low), self.levels) or self.high.shape != self.low.shape:
            raise ValueError("state's low/high/probabilities shapes do not agree")
        return self
