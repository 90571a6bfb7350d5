"""`Gate`: MoE²'s gating network: a small MLP over a query's MiniLM embedding and its category that weighs every
expert. It is trained once on the full expert set; for a subset S its weights are renormalized over S.

Training minimises the mixture's cross-entropy, -log sum_k g_k(x) p_k(y | x), on the train split. MoE² (arXiv
2501.09410, the optimality-preserving property of the two-level selection) argues that the gate optimal for the
full set, restricted and renormalized, is optimal for every subset; `train_gate(..., subset=S)` retrains on S
alone so that the claim can be tested on held-out queries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgepool.scheduling.moe2.queries import CATEGORIES

HIDDEN = 64


@dataclass(frozen=True)
class GateConfig:
    epochs: int = 300  # full-batch Adam steps
    lr: float = 1e-2
    weight_decay: float = 1e-3


class Gate(nn.Module):
    """[N, 384 + n_categories] features -> [N, K] expert logits."""

    def __init__(self, features: int, experts: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def embed_queries(texts: list[str], batch: int = 64) -> np.ndarray:
    """Mean-pooled all-MiniLM-L6-v2 embeddings, L2-normalised, [N, 384] (real pretrained encoder)."""
    from edgepool.finetune.backbone import load_backbone

    backbone = load_backbone("all-minilm-l6-v2")
    model, tokenizer = backbone.model.eval(), backbone.tokenizer
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True, max_length=64)
            h = model(**enc).last_hidden_state  # [B, T, 384]
            mask = enc["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
            pooled = (h * mask).sum(1) / mask.sum(1)  # [B, 384]
            out.append(nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy()


def features(embeddings: np.ndarray, categories: list[str]) -> np.ndarray:
    """[N, 384 + n_categories]: the embedding and the category as one-hot (the gate sees both)."""
    onehot = np.zeros((len(categories), len(CATEGORIES)), dtype=np.float32)
    onehot[np.arange(len(categories)), [CATEGORIES.index(c) for c in categories]] = 1.0
    return np.concatenate([embeddings.astype(np.float32), onehot], axis=1)


def mixture_loss(logits: torch.Tensor, probs: torch.Tensor, answers: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean -log sum_k w_k p_k[y]; `mask` [K] bool keeps a subset (weights renormalized over it)."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    w = torch.softmax(logits, -1)  # [N, K]
    p_true = probs[torch.arange(len(answers)), :, answers]  # [N, K]
    return -torch.log((w * p_true).sum(-1) + 1e-9).mean()


def train_gate(x: np.ndarray, probs: np.ndarray, answers: np.ndarray, seed: int,
               config: GateConfig = GateConfig(), subset: list[int] | None = None) -> Gate:
    """A gate trained on (x [N, F], probs [N, K, C], answers [N]); on `subset` alone when given."""
    torch.manual_seed(seed)
    gate = Gate(x.shape[1], probs.shape[1])
    xt, pt, yt = torch.as_tensor(x), torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(answers)
    mask = None
    if subset is not None:
        mask = torch.zeros(probs.shape[1], dtype=torch.bool)
        mask[list(subset)] = True
    opt = torch.optim.Adam(gate.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(config.epochs):
        opt.zero_grad()
        loss = mixture_loss(gate(xt), pt, yt, mask)
        loss.backward()
        opt.step()
    return gate.eval()


def out_of_fold_weights(x: np.ndarray, probs: np.ndarray, answers: np.ndarray, seed: int, folds: int = 5,
                        config: GateConfig = GateConfig()) -> np.ndarray:
    """[N, K] weights for every training query from a gate that did not see it (k-fold cross-fitting), so
    that choosing experts on the train split does not reward a gate that memorised it."""
    order = np.random.default_rng(seed).permutation(len(x))
    out = np.zeros(probs.shape[:2], dtype=np.float32)
    for f in range(folds):
        held = order[f::folds]
        fit = np.setdiff1d(order, held)
        out[held] = gate_weights(train_gate(x[fit], probs[fit], answers[fit], seed + 1 + f, config), x[held])
    return out


def gate_weights(gate: Gate, x: np.ndarray) -> np.ndarray:
    """[N, K] softmax weights over all experts (renormalize over a subset by masking and dividing)."""
    with torch.inference_mode():
        return torch.softmax(gate(torch.as_tensor(x)), -1).numpy()


def subset_loss(weights: np.ndarray, probs: np.ndarray, answers: np.ndarray, subset: list[int]) -> float:
    """The mixture's cross-entropy on subset S with weights renormalized over S."""
    w = weights[:, subset]
    w = w / w.sum(1, keepdims=True)
    p_true = probs[np.arange(len(answers))[:, None], subset, answers[:, None]]  # [N, |S|]
    return float(-np.log((w * p_true).sum(1) + 1e-9).mean())
