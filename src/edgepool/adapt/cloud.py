"""The cloud side: a stronger foundation model, its own copy of the edge model and a replay buffer of uploads.

By default the edge normalizes each batch it serves with that batch's own statistics (`Edge(batch_stats=True)`,
forward only), and so do both models here, each part of a batch (the uploads, the replayed samples) with its
own. For each upload the cloud (1) adapts the foundation model's BatchNorm affine parameters by entropy
minimisation on its reliable samples, weighted by 1/exp(entropy - E0) (Tent/ETA-style), and (2) distills it
into the edge copy's BatchNorm affine parameters on the uploads plus a random draw from the replay buffer, with
    loss = entropy(edge) + KL(cloud || edge) + cross-entropy(edge, cloud's pseudo-labels).
It answers with the edge copy's normalization state. With `CloudSettings(batch_stats=False)` (an edge that
normalizes with running statistics) it first re-estimates both models' running statistics on the most recent
uploads, which the answer then carries too; uploads picked by entropy skew those statistics, which is why the
batch-statistics edge is the default.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgepool.adapt.edge import check_images
from edgepool.adapt.models import batch_statistics, norm_params, norm_state, reestimate_norm_stats, to_input
from edgepool.adapt.selection import entropy
from edgepool.errors import SpecError


@dataclass(frozen=True)
class CloudSettings:
    foundation_lr: float = 1e-3  # Adam on the foundation model's BatchNorm affine parameters
    foundation_steps: int = 1
    edge_lr: float = 2e-3  # Adam on the edge copy's BatchNorm affine parameters
    distill_steps: int = 2
    replay_capacity: int = 256  # uploads kept (first in, first out): recent ones, the shift may have moved on
    replay_batch: int = 64  # replayed samples added to each distillation batch
    stats_window: int = 1  # running statistics come from the uploads of the last this-many requests
    e0: float = 0.4  # the foundation model learns only from samples with entropy below e0 x ln C
    batch_stats: bool = True  # the edge normalizes with batch statistics (Edge(batch_stats=True)): so does its copy

    def __post_init__(self):
        for key in ("foundation_steps", "distill_steps", "replay_capacity", "replay_batch", "stats_window"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "stats_window" else 0):
                raise SpecError(field=key, value=value, accepted="a whole number >= 0 (stats_window >= 1)")
        for key in ("foundation_lr", "edge_lr", "e0"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SpecError(field=key, value=value, accepted="a number >= 0")


class Cloud:
    """The foundation model, the cloud's copy of the edge model, the replay buffer; `handle` adapts both."""

    def __init__(self, foundation: nn.Module, edge_model: nn.Module, num_classes: int,
                 settings: CloudSettings | None = None, seed: int = 0):
        self.settings = settings or CloudSettings()
        self.foundation = foundation.eval()
        self.edge = copy.deepcopy(edge_model).eval()
        for model in (self.foundation, self.edge):
            for p in model.parameters():
                p.requires_grad_(False)
        self.foundation_params, self.edge_params = norm_params(self.foundation), norm_params(self.edge)
        for p in self.foundation_params + self.edge_params:
            p.requires_grad_(True)
        self.foundation_opt = torch.optim.Adam(self.foundation_params, lr=self.settings.foundation_lr)
        self.edge_opt = torch.optim.Adam(self.edge_params, lr=self.settings.edge_lr)
        self.e0 = self.settings.e0 * math.log(num_classes)
        self.replay: list[torch.Tensor] = []  # uploads, each [1,H,W]
        self.recent: list[torch.Tensor] = []  # the last `stats_window` uploads, each [k,1,H,W]
        self.rng = np.random.default_rng(seed)
        self.requests = 0
        self.last: dict = {}  # what the last request did (for logs and tests)

    def _forward(self, model: nn.Module, parts: list[torch.Tensor]) -> torch.Tensor:
        """Logits [sum of parts, C]; with `batch_stats` each part is normalized with its own statistics, as the
        edge normalizes each batch it serves."""
        if not self.settings.batch_stats:
            return model(torch.cat(parts))
        with batch_statistics(model):
            return torch.cat([model(p) for p in parts])

    def state(self) -> dict[str, torch.Tensor]:
        """The edge copy's normalization state, as `handle` returns it."""
        return norm_state(self.edge)

    def handle(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        """Adapt on uploads uint8 [k,H,W] (k >= 1) and return the edge's new normalization state."""
        x = to_input(check_images(images))  # [k,1,H,W]
        s = self.settings
        if not s.batch_stats:  # the edge normalizes with running statistics: estimate them on recent uploads
            self.recent = (self.recent + [x])[-s.stats_window:]
            window = torch.cat(self.recent)
            reestimate_norm_stats(self.foundation, window)
            reestimate_norm_stats(self.edge, window)
        self.foundation.eval()
        self.edge.eval()

        reliable = 0
        for _ in range(s.foundation_steps):  # Tent/ETA on the foundation model, reliable samples only
            ent = entropy(self._forward(self.foundation, [x]))
            keep = ent.detach() < self.e0
            reliable = int(keep.sum())
            if reliable:
                loss = (ent[keep] * torch.exp(-(ent[keep].detach() - self.e0))).mean()
                self.foundation_opt.zero_grad()
                loss.backward()
                self.foundation_opt.step()

        parts = [x]  # the uploads, then a random draw from the replay buffer: normalized apart
        if self.replay and s.replay_batch:
            pick = self.rng.choice(len(self.replay), size=min(s.replay_batch, len(self.replay)), replace=False)
            parts.append(torch.stack([self.replay[i] for i in pick]))  # [r,1,H,W]
        with torch.no_grad():
            teacher = self._forward(self.foundation, parts).log_softmax(1)  # [k+r,C]
        for _ in range(s.distill_steps):  # distill into the edge copy's affine parameters
            logits = self._forward(self.edge, parts)
            loss = (entropy(logits).mean()
                    + nn.functional.kl_div(logits.log_softmax(1), teacher, log_target=True, reduction="batchmean")
                    + nn.functional.cross_entropy(logits, teacher.argmax(1)))
            self.edge_opt.zero_grad()
            loss.backward()
            self.edge_opt.step()
        self.replay.extend(x)
        del self.replay[:max(0, len(self.replay) - s.replay_capacity)]
        self.requests += 1
        self.last = {"uploads": len(x), "reliable_for_foundation": reliable,
                     "distill_batch": sum(len(p) for p in parts)}
        return self.state()
