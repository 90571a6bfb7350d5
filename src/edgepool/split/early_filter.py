"""An early filter in the head: a tiny classifier on the head's pooled features that says whether the input
holds the object of interest; inputs it rejects send nothing (no encoding, no bytes, no server work).

The threshold is set on the training images for a target recall (missing an object costs more than
sending an empty frame); recall, the fraction rejected and the bytes and seconds saved are measured on
the test images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class EarlyFilter(nn.Module):
    """Logistic regression on the cut's globally pooled features: C + 1 weights, negligible next to the head."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, 1)
        self.register_buffer("threshold", torch.tensor(0.0))

    def score(self, features: torch.Tensor) -> torch.Tensor:  # N x C x H x W -> N logits
        return self.linear(features.mean(dim=(2, 3))).squeeze(1)

    def keep(self, features: torch.Tensor) -> torch.Tensor:
        """True where the input may hold the object: send it."""
        return self.score(features) >= self.threshold


def train_filter(features: torch.Tensor, positive: np.ndarray, target_recall: float = 0.995, steps: int = 300,
                 seed: int = 0) -> EarlyFilter:
    """Fit on training features (N x C x H x W) and set the threshold for `target_recall` on them."""
    torch.manual_seed(seed)
    pooled = features.mean(dim=(2, 3))
    mean, std = pooled.mean(0), pooled.std(0) + 1e-6
    y = torch.as_tensor(positive, dtype=torch.float32)
    model = EarlyFilter(features.shape[1])
    # fitted on standardised features (full-batch L-BFGS converges), then folded into the linear layer
    weight = nn.Parameter(torch.zeros(features.shape[1]))
    bias = nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    pos_weight = (len(y) - y.sum()) / y.sum().clamp_min(1)

    def closure():
        optimizer.zero_grad()
        logits = ((pooled - mean) / std) @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        model.linear.weight.copy_((weight / std).unsqueeze(0))
        model.linear.bias.copy_(bias - (weight * mean / std).sum())
        scores = model.score(features)[y.bool()]
        # the highest threshold that still keeps `target_recall` of the training positives
        model.threshold.copy_(torch.quantile(scores, 1 - target_recall) if len(scores) else torch.tensor(0.0))
    return model.eval()


@dataclass(frozen=True)
class FilterResult:
    target: str  # what the object of interest is
    recall: float
    precision: float
    rejected_fraction: float
    bytes_saved_fraction: float
    seconds_saved_per_image: float  # modelled from the table: encode + transfer + server work not done
    bandwidth_bps: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_filter(model: EarlyFilter, features: torch.Tensor, positive: np.ndarray, bytes_per_image: np.ndarray,
                    skipped_seconds: float, bandwidth_bps: float, target: str) -> FilterResult:
    """`bytes_per_image`: what each test image would send without the filter; `skipped_seconds`: the device's
    encoding and the server's work per image that a rejection avoids (from the rate-accuracy table)."""
    keep = model.keep(features).numpy()
    positive = np.asarray(positive, dtype=bool)
    sizes = np.asarray(bytes_per_image, dtype=np.float64)
    rejected = ~keep
    saved_bytes = float(sizes[rejected].sum() / sizes.sum())
    per_image = skipped_seconds + 8 * float(sizes.mean()) / bandwidth_bps
    return FilterResult(target=target, recall=float(keep[positive].mean()),
                        precision=float(positive[keep].mean()) if keep.any() else 0.0,
                        rejected_fraction=float(rejected.mean()), bytes_saved_fraction=saved_bytes,
                        seconds_saved_per_image=float(rejected.mean()) * per_image, bandwidth_bps=bandwidth_bps)
