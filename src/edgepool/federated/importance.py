"""Which weight matrices deserve LoRA: rank the encoder's linear layers by their contribution to training.

FedPipe puts LoRA adapters only on the important weights. Two criteria:

- "sensitivity" (first-order Taylor importance): I(W) = mean over elements of sum_batches |W ⊙ dL/dW|, the
  first-order estimate of how much the loss changes if W's entries were removed, from a few real task
  batches. It is normalised per element (a mean, not a sum) because the feed-forward matrices hold 4x the
  elements of the attention ones: a sum would rank mostly by size and pick the FFN matrices whatever the
  task, while top-k compares matrices at an equal count of adapters.
- "svd" (data-free): the fraction of a matrix's spectral energy (sum of sigma^2) outside its top-k singular
  values. A matrix whose energy is spread over many directions is assumed to carry more that a low-rank
  update can reshape; a comparison baseline, no task data needed.

Module names are the full dotted paths inside the backbone model ("encoder.layer.0.attention.self.query").
peft matches `target_modules` by equality or by a ".name" suffix, so a full path selects exactly that module.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.finetune.adapters import ClassifierHead
from edgepool.finetune.backbone import Backbone
from edgepool.finetune.data import EncodedSplit, batch_schedule, pad_batch

CRITERIA = ("sensitivity", "svd")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids [b, s], attention_mask [b, s], labels [b]


@dataclass
class MatrixScore:
    name: str  # full module path inside the backbone model
    score: float
    params: int  # elements of the weight matrix


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the encoder blocks (query, key, value, attention.output.dense, intermediate.dense,
    output.dense per layer); the pooler and the head are left out."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")}
    if not found:
        raise SpecError(field="model", value=type(model).__name__,
                        accepted="a BERT-family encoder (linear layers under encoder.layer.*)")
    return found


def task_batches(split: EncodedSplit, pad_id: int, batch_size: int, n_batches: int) -> list[Batch]:
    """The first `n_batches` batches of a split, padded: the calibration data of the sensitivity criterion."""
    out = []
    for lo in range(0, min(len(split), batch_size * n_batches), batch_size):
        idx = range(lo, min(lo + batch_size, len(split)))
        ids, mask = pad_batch([split.input_ids[i] for i in idx], pad_id)
        out.append((ids, mask, torch.tensor([split.labels[i] for i in idx])))
    return out


def _sensitivity(model: nn.Module, head: nn.Module, batches: list[Batch]) -> dict[str, float]:
    """Mean |W ⊙ dL/dW| per matrix, summed over batches. Gradients flow to the weights only for this measure;
    requires_grad flags and .grad are restored afterwards."""
    if not batches:
        raise SpecError(field="batches", value=0, accepted="at least one batch for the sensitivity criterion")
    linears = encoder_linears(model)
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for m in linears.values():
        m.weight.requires_grad_(True)
    total = {n: 0.0 for n in linears}
    try:
        for ids, mask, labels in batches:
            loss = nn.functional.cross_entropy(head(model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                                    mask), labels)
            grads = torch.autograd.grad(loss, [m.weight for m in linears.values()])
            for (name, m), g in zip(linears.items(), grads):
                total[name] += float((m.weight.detach() * g).abs().mean())
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return total


def _svd_energy(model: nn.Module, top: int) -> dict[str, float]:
    out = {}
    for name, m in encoder_linears(model).items():
        energy = torch.linalg.svdvals(m.weight.detach().float()) ** 2  # descending
        out[name] = float(energy[top:].sum() / energy.sum())
    return out


def rank_matrices(backbone: Backbone, head: nn.Module, batches: list[Batch] | None,
                  criterion: str = "sensitivity", svd_top: int = 8) -> list[MatrixScore]:
    """Encoder weight matrices, most important first. `batches` feed "sensitivity"; "svd" ignores them."""
    model = backbone.model
    if criterion == "sensitivity":
        with torch.enable_grad():
            scores = _sensitivity(model, head, batches or [])
    elif criterion == "svd":
        if svd_top < 1:
            raise SpecError(field="svd_top", value=svd_top, accepted="an integer >= 1")
        scores = _svd_energy(model, svd_top)
    else:
        raise SpecError(field="criterion", value=criterion, accepted=", ".join(CRITERIA))
    linears = encoder_linears(model)
    ranked = [MatrixScore(n, s, linears[n].weight.numel()) for n, s in scores.items()]
    return sorted(ranked, key=lambda m: -m.score)


def top_modules(scores: list[MatrixScore], k: int | None = None, fraction: float | None = None) -> list[str]:
    """Names of the `k` (or `fraction` of all) highest-scoring matrices: usable as peft `target_modules`."""
    if (k is None) == (fraction is None):
        raise SpecError(field="k/fraction", value=(k, fraction), accepted="exactly one of k or fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise SpecError(field="fraction", value=fraction, accepted="a number in (0, 1]")
        k = max(1, round(fraction * len(scores)))
    if not 1 <= k <= len(scores):
        raise SpecError(field="k", value=k, accepted=f"an integer in 1..{len(scores)}")
    ranked = sorted(scores, key=lambda m: -m.score)
    return [m.name for m in ranked[:k]]


def lora_model(model: nn.Module, target_modules: list[str], rank: int, seed: int = 0) -> nn.Module:
    """A copy of `model` with LoRA (alpha = 2 * rank, no dropout) on exactly `target_modules`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(target_modules))
    return get_peft_model(copy.deepcopy(model), config)


@dataclass
class ArmResult:
    """One LoRA run on a chosen set of matrices."""
    arm: str  # top | bottom | random | query_value | svd_top
    modules: list[str]
    trainable_params: int  # LoRA + head
    accuracy: float  # % on the test split
    train_s: float


def train_lora(backbone: Backbone, task, target_modules: list[str], *, rank: int = 8, lr: float = 5e-4,
               epochs: int = 2, batch_size: int = 16, seed: int = 0) -> tuple[float, int, float]:
    """LoRA on `target_modules` + a fresh head; returns (test accuracy %, trainable params, train seconds).
    The backbone is copied, never changed. Dropout is off, as in edgepool.finetune."""
    model = lora_model(backbone.model, target_modules, rank, seed)
    model.train(False)
    torch.manual_seed(seed)
    head = ClassifierHead(backbone.hidden_size, task.num_labels)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)

    def logits(split: EncodedSplit, idx: list[int]) -> torch.Tensor:
        ids, mask = pad_batch([split.input_ids[i] for i in idx], task.pad_id)
        return head(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    start = time.perf_counter()
    for epoch in range(epochs):
        for (idx,) in batch_schedule(len(task.train), batch_size, epoch, seed):
            labels = torch.tensor([task.train.labels[i] for i in idx])
            loss = nn.functional.cross_entropy(logits(task.train, idx), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_s = time.perf_counter() - start
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(task.test), 64):
            idx = list(range(lo, min(lo + 64, len(task.test))))
            labels = torch.tensor([task.test.labels[i] for i in idx])
            correct += int((logits(task.test, idx).argmax(-1) == labels).sum())
    return 100.0 * correct / len(task.test), sum(p.numel() for p in trainable), train_s


def measure_importance(model: str = "all-minilm-l6-v2", *, k: int = 12, n_train: int = 400, n_test: int = 200,
                       max_length: int = 48, epochs: int = 2, batch_size: int = 16, rank: int = 8,
                       lr: float = 5e-4, calibration_batches: int = 4, seed: int = 0) -> dict:
    """Does the sensitivity ranking pick matrices that matter? LoRA on the top-k, the bottom-k, a random k,
    query+value of the first layers (LoRA's default, cut to k) and the svd criterion's top-k, same budget and
    seed. Sensitivity is computed on the first `calibration_batches` train batches with the fresh head."""
    from edgepool.finetune.backbone import load_backbone
    from edgepool.finetune.data import encode_task, load_tweet_sentiment

    torch.set_num_threads(1)
    backbone = load_backbone(model, seed=seed).freeze()
    task = encode_task(load_tweet_sentiment(n_train, n_test, seed=seed), backbone.tokenizer, max_length)
    torch.manual_seed(seed)
    head = ClassifierHead(backbone.hidden_size, task.num_labels)
    calibration = task_batches(task.train, task.pad_id, batch_size, calibration_batches)
    scores = rank_matrices(backbone, head, calibration, "sensitivity")
    svd = rank_matrices(backbone, head, None, "svd", svd_top=rank)
    names = [m.name for m in scores]
    qv = [n for n in encoder_linears(backbone.model) if n.endswith((".query", ".value"))][:k]
    arms = {"top": names[:k], "bottom": names[-k:], "random": random.Random(seed).sample(names, k),
            "query_value": qv, "svd_top": top_modules(svd, k=k)}
    results = []
    for arm, modules in arms.items():
        accuracy, params, train_s = train_lora(backbone, task, modules, rank=rank, lr=lr, epochs=epochs,
                                               batch_size=batch_size, seed=seed)
        results.append(ArmResult(arm, modules, params, accuracy, train_s))
    return {"model": model, "k": k, "of": len(names), "rank": rank, "lr": lr, "epochs": epochs,
            "n_train": n_train, "n_test": n_test, "max_length": max_length, "batch_size": batch_size,
            "scores": [asdict(m) for m in scores], "arms": [asdict(r) for r in results]}
