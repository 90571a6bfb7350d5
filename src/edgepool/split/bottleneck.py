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

from edgepool.split.backbone import predict
from edgepool.split.bitstream import BitstreamError, SymbolCoder, decode_tensor, encode_tensor, pack, unpack
from edgepool.split.codecs import FeatureQuantizer


class _Coder(nn.Module):
    """A linear map plus a small convolutional branch that starts at zero.

    The linear map can start as a transform code fitted to the training features (`fit_transform`: PCA's
    rotation onto the b strongest components, each scaled so that the rounding step is `step` of its own
    spread), so training begins from good reconstructions and learns what improves on them.
    """

    def __init__(self, cin: int, cout: int, hidden: int, stride: int, up: bool):
        super().__init__()
        if stride == 1:
            self.linear = nn.Conv2d(cin, cout, 1)
        else:
            self.linear = nn.ConvTranspose2d(cin, cout, 2, 2) if up else nn.Conv2d(cin, cout, 2, 2)
        resample = (nn.ConvTranspose2d(hidden, hidden, 4, 2, 1, bias=False) if up else
                    nn.Conv2d(hidden, hidden, 3, 2, 1, bias=False)) if stride == 2 else \
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False)
        self.branch = nn.Sequential(  # light on the device's side (encoder), heavier on the server's (decoder)
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            resample, nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))
        nn.init.zeros_(self.branch[-1].weight)
        nn.init.zeros_(self.branch[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.branch(x)


def _coders(channels: int, size: int, hidden: int, stride: int) -> tuple[_Coder, _Coder]:
    """Encoder C x H x W -> b x h x w (light: it runs on the device) and decoder back (heavier: on the server)."""
    return (_Coder(channels, size, hidden // 2, stride, up=False), _Coder(size, channels, hidden, stride, up=True))


@torch.no_grad()
def fit_transform(encoder: _Coder, decoder: _Coder, features: torch.Tensor, step: float) -> None:
    """Start encoder and decoder as a transform code (PCA over channels) of `features` (N x C x H x W)."""
    if not isinstance(encoder.linear, nn.Conv2d) or encoder.linear.kernel_size != (1, 1):
        return  # strided bottlenecks keep their random start
    b = encoder.linear.out_channels
    x = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()  # positions x C
    mean = x.mean(0)
    _, singular, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = v[:b]  # b x C, strongest first
    spread = singular[:b] / len(x) ** 0.5  # each component's standard deviation
    scale = (1.0 / (step * spread.clamp_min(1e-6 * float(spread[0])))).unsqueeze(1)  # b x 1: same relative step
    encoder.linear.weight.copy_((basis * scale).float().view(b, -1, 1, 1))
    encoder.linear.bias.copy_((-(basis @ mean) * scale[:, 0]).float())
    decoder.linear.weight.copy_((basis / scale).T.float().view(-1, b, 1, 1))
    decoder.linear.bias.copy_(mean.float())


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
        frame = unpack(data, "raw")
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
        self.encoder, self.decoder = _coders(channels, bottleneck, hidden, stride)
        self.quantizer = FeatureQuantizer(bits=bits)
        self.fitted = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.decoder(self.encoder(x)), None

    @torch.no_grad()
    def fit_coder(self, features: torch.Tensor) -> None:
        """Fit the quantizer's range and the entropy coder's tables on training features (N x C x H x W)."""
        self.eval()
        self.quantizer.fit(predict(self.encoder, features, batch=64))
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
        self.encoder, self.decoder = _coders(channels, latent, hidden, stride)
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

    @torch.no_grad()
    def fit_range(self, features: torch.Tensor) -> None:
        """Size the coder's support and the prior's starting spread to the latents of training features."""
        y = torch.cat([self.encoder(features[i:i + 64]) for i in range(0, len(features), 64)])
        self.max_symbol = int(min(4096, math.ceil(1.25 * float(y.abs().max())) + 1))
        self.prior = FactorizedPrior(self.latent, init_scale=max(1.0, 4 * float(y.std())))
        fit_prior(self.prior, y)

    def extra_state(self) -> dict:
        return {"max_symbol": self.max_symbol}

    def load_extra_state(self, state: dict) -> None:
        self.max_symbol = state.get("max_symbol", self.max_symbol)
        self._coder = None


def fit_prior(prior: FactorizedPrior, y: torch.Tensor, steps: int = 300, samples: int = 4096) -> None:
    """Maximum likelihood of the prior alone on (noisy) latents, so training starts with a fitted rate."""
    values = y.detach().permute(1, 0, 2, 3).reshape(y.shape[1], -1)  # C x positions
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(0, values.shape[1], (samples,), generator=generator)
        batch = values[:, pick] + torch.rand(values.shape[0], samples, generator=generator) - 0.5
        with torch.enable_grad():  # also when called under no_grad (fit_range)
            loss = -torch.log2(prior.likelihood(batch.T.reshape(samples, -1, 1, 1))).mean()
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()


BOTTLENECKS = {"bottlefit": BottleFit, "entropic": EntropicStudent}
