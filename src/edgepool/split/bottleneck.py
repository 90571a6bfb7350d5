"""What the head sends: learned bottlenecks (BottleFit, Entropic Student) and the identity, each a pair of
halves, `encode` on the device (features -> bytes) and `decode` on the server (bytes -> features).

Every byte that crosses the link is a framed, checked bitstream (`bitstream`): integer symbols coded by a
real entropy coder, so a size is `len(bytes)`. Shapes in comments: C x H x W is what the cut outputs,
b x h x w the bottleneck (h = H/2 when the encoder downsamples).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgepool.split.bitstream import BitstreamError, SymbolCoder, decode_tensor, encode_tensor, pack, unpack
from edgepool.split.codecs import FeatureQuantizer


def _encoder(cin: int, hidden: int, out: int, stride: int) -> nn.Sequential:
    """Light, because it runs on the device: one 3x3 convolution (downsampling) and a 1x1 projection."""
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 3, stride, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out, 1))


def _decoder(cin: int, hidden: int, out: int, stride: int) -> nn.Sequential:
    """Heavier, because it runs on the server: back to the cut's channels and resolution."""
    up = (nn.ConvTranspose2d(hidden, hidden, 4, 2, 1, bias=False) if stride == 2
          else nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False))
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        up, nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out, 3, 1, 1))


class IdentityBottleneck(nn.Module):
    """No bottleneck: the cut's float32 features, sent raw. The split model then computes exactly what the
    unsplit one does (the test of the split itself)."""

    method = "identity"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return x, None

    @torch.no_grad()
    def encode(self, feature: torch.Tensor) -> bytes:  # C x H x W
        array = feature.detach().to(torch.float32).contiguous().numpy()
        return pack("raw", array.shape, array.tobytes())

    @torch.no_grad()
    def decode(self, data: bytes) -> torch.Tensor:
        frame = unpack(data)
        if frame.kind != "raw":
            raise BitstreamError(f"bitstream holds {frame.kind!r}, this decoder reads 'raw'")
        count = math.prod(frame.shape)
        if len(frame.payload) != 4 * count:
            raise BitstreamError(f"bitstream corrupted: raw payload of {len(frame.payload)} bytes for shape "
                                 f"{frame.shape}")
        return torch.from_numpy(np.frombuffer(frame.payload, dtype=np.float32).reshape(frame.shape).copy())

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class BottleFit(nn.Module):
    """BottleFit (Matsubara et al. 2022): a convolutional encoder/decoder inserted at the cut, its output
    quantized to `bits` bits per element (a fitted per-channel range) and entropy coded with tables fitted on
    the training features. Trained in two stages: head distillation (encoder/decoder reproduce the teacher's
    features), then the tail fine-tuned on the teacher's outputs."""

    method = "bottlefit"

    def __init__(self, channels: int, bottleneck: int, hidden: int = 64, stride: int = 2, bits: int = 8):
        super().__init__()
        self.channels, self.bottleneck, self.stride = channels, bottleneck, stride
        self.encoder = _encoder(channels, hidden, bottleneck, stride)  # C x H x W -> b x h x w
        self.decoder = _decoder(bottleneck, hidden, channels, stride)  # b x h x w -> C x H x W
        self.quantizer = FeatureQuantizer(bits=bits)
        self.fitted = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.decoder(self.encoder(x)), None

    @torch.no_grad()
    def fit_coder(self, features: torch.Tensor) -> None:
        """Fit the quantizer's range and the entropy coder's tables on training features (N x C x H x W)."""
        self.eval()
        z = torch.cat([self.encoder(features[i:i + 64]) for i in range(0, len(features), 64)])
        self.quantizer.fit(z)
        self.fitted = True

    @torch.no_grad()
    def encode(self, feature: torch.Tensor) -> bytes:
        if not self.fitted:
            raise RuntimeError("BottleFit: fit_coder() before encoding")
        return self.quantizer.encode(self.encoder(feature.unsqueeze(0))[0])

    @torch.no_grad()
    def decode(self, data: bytes) -> torch.Tensor:
        return self.decoder(self.quantizer.decode(data).unsqueeze(0))[0]

    def symbols(self, feature: torch.Tensor) -> np.ndarray:
        """The integers the encoder quantizes to (what the bitstream must carry exactly)."""
        with torch.no_grad():
            return self.quantizer.quantize(self.encoder(feature.unsqueeze(0))[0])

    def extra_state(self) -> dict:
        return {"quantizer": self.quantizer.state_dict(), "fitted": self.fitted}

    def load_extra_state(self, state: dict) -> None:
        self.quantizer.load_state_dict(state["quantizer"])
        self.fitted = state["fitted"]


class FactorizedPrior(nn.Module):
    """A learned density per channel, shared over positions (Ballé et al. 2018, "Variational image compression
    with a scale hyperprior", appendix 6.1): the cumulative is a small monotone network per channel, so the
    probability of an integer y is c(y + 1/2) - c(y - 1/2). Its rate is what training minimises; its
    probability tables are what the entropy coder uses, so model and bitstream agree."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cdf(self, x: torch.Tensor) -> torch.Tensor:  # x: C x 1 x N
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """P(y) per element of y (B x C x H x W), at integer or noisy values."""
        b, c, h, w = y.shape
        v = y.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower, upper = self._logits_cdf(v - 0.5), self._logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the tail where the sigmoid is accurate
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).clamp_min(1e-9)
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def table(self, low: int, size: int) -> np.ndarray:
        """C x size probabilities of the integers low .. low + size - 1 (renormalised over that support)."""
        values = torch.arange(low, low + size, dtype=torch.float32).view(1, 1, 1, size)
        c = self.matrices[0].shape[0]
        return self.likelihood(values.expand(1, c, 1, size))[0, :, 0, :].double().numpy()


class EntropicStudent(nn.Module):
    """Entropic Student (Matsubara et al., "Supervised compression for resource-constrained edge computing
    systems", WACV 2022): an encoder whose output is quantized by rounding (uniform noise while training)
    and whose rate under a learned factorized prior is part of the loss, a decoder back to the cut's
    features. Trained for rate-distortion against the teacher's features, then with knowledge distillation."""

    method = "entropic"

    def __init__(self, channels: int, latent: int, hidden: int = 64, stride: int = 2, max_symbol: int = 60):
        super().__init__()
        self.channels, self.latent, self.stride = channels, latent, stride
        self.encoder = _encoder(channels, hidden, latent, stride)  # C x H x W -> b x h x w
        self.decoder = _decoder(latent, hidden, channels, stride)  # b x h x w -> C x H x W
        self.prior = FactorizedPrior(latent)
        self.max_symbol = max_symbol  # the coder's support is [-max_symbol, max_symbol]; beyond it clamps

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            return y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return torch.round(y).clamp(-self.max_symbol, self.max_symbol)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructed features and the rate in bits per image (the prior's information content)."""
        y_hat = self.quantize(self.encoder(x))
        bits = -torch.log2(self.prior.likelihood(y_hat)).sum() / len(x)
        return self.decoder(y_hat), bits

    def coder(self) -> SymbolCoder:
        return SymbolCoder(low=-self.max_symbol, probabilities=self.prior.table(-self.max_symbol,
                                                                                2 * self.max_symbol + 1))

    def symbols(self, feature: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            was = self.training
            self.eval()
            y = self.quantize(self.encoder(feature.unsqueeze(0)))[0]
            self.train(was)
        return y.to(torch.int32).numpy()

    @torch.no_grad()
    def encode(self, feature: torch.Tensor) -> bytes:
        return encode_tensor(self.symbols(feature), self._cached_coder(), "entropic")

    @torch.no_grad()
    def decode(self, data: bytes) -> torch.Tensor:
        symbols, _ = decode_tensor(data, self._cached_coder(), "entropic")
        return self.decoder(torch.from_numpy(symbols.astype(np.float32)).unsqueeze(0))[0]

    def _cached_coder(self) -> SymbolCoder:
        if getattr(self, "_coder", None) is None or self.training:
            self._coder = self.coder()
        return self._coder

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        self._coder = None


BOTTLENECKS = {"bottlefit": BottleFit, "entropic": EntropicStudent}
