"""The one training loop every fine-tuning method runs in: full fine-tuning, LoRA (peft), parallel adapters, PAC.

Every method sees the same backbone, data, batches (same seed), head (mean pooling + linear), optimizer
(AdamW) and epochs; they differ only in what is trained and where the backbone's states come from, which is
the method's `FinetuneMethod` (method.py: one class per method, registered by name):

| method   | trains                         | backbone each step                        |
| -------- | ------------------------------ | ----------------------------------------- |
| full     | every weight + head            | forward and backward                      |
| lora     | LoRA matrices (peft) + head    | forward and backward (frozen weights)     |
| adapters | parallel adapters + head       | forward only, under no_grad               |
| pac      | parallel adapters + head       | forward only for samples not yet cached   |
| sparse   | chosen units (sparse.py) + head| forward; backward from the earliest unit  |

Dropout is off in every method (backbone in eval mode, LoRA dropout 0) so results are deterministic.

Every epoch records its backward memory, measured: the peak bytes autograd saved for backward (parameters
excluded), plus the gradients' bytes, plus the AdamW state's bytes.
"""
from __future__ import annotations

import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import psutil
import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.finetune.activation_cache import DTYPES, ActivationCache, cache_fingerprint
from edgepool.finetune.backbone import MODEL_NAMES, Backbone, load_backbone
from edgepool.finetune.data import (DATASETS, EncodedSplit, EncodedTask, batch_schedule, encode_task,
                                    load_tweet_sentiment, pad_batch, synthetic_token_task)
from edgepool.finetune.method import finetune_method, method_names
from edgepool.finetune.sparse import parse_unit

CACHE_FILLS = ("sorted", "inline")
MB = 1 << 20


@dataclass
class FinetuneConfig:
    model: str = "all-minilm-l6-v2"
    method: str = "pac"
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None
    dataset: str = "tweet-sentiment"
    n_train: int = 1000
    n_test: int = 500
    max_length: int = 48
    bottleneck: int = 64
    lora_rank: int = 8
    seed: int = 0
    cache_dtype: str = "float32"
    cache_memory_budget_mb: float = 1024.0
    cache_disk_budget_mb: float = 0.0
    cache_dir: str | None = None
    eval_each_epoch: bool = True  # False: evaluate after the last epoch only (accuracy NaN before it)
    cache_fill: str = "sorted"  # "sorted": one length-sorted backbone pass first; "inline": during epoch 1's steps
    threads: int | None = None
    memory_budget_mb: float | None = None  # sparse: backward-memory budget for the contribution analysis
    sparse_updates: list[str] | None = None  # sparse: units to train ([]: head only; with a budget: candidates)

    def validate(self) -> "FinetuneConfig":
        checks = [("method", self.method, self.method in method_names(), ", ".join(method_names())),
                  ("model", self.model, self.model in MODEL_NAMES, ", ".join(MODEL_NAMES)),
                  ("dataset", self.dataset, self.dataset in DATASETS, ", ".join(DATASETS)),
                  ("epochs", self.epochs, self.epochs >= 1, "an integer >= 1"),
                  ("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1"),
                  ("bottleneck", self.bottleneck, self.bottleneck >= 1, "an integer >= 1"),
                  ("lora_rank", self.lora_rank, self.lora_rank >= 1, "an integer >= 1"),
                  ("cache_dtype", self.cache_dtype, self.cache_dtype in DTYPES, ", ".join(DTYPES)),
                  ("cache_memory_budget_mb", self.cache_memory_budget_mb, self.cache_memory_budget_mb >= 0, ">= 0"),
                  ("cache_disk_budget_mb", self.cache_disk_budget_mb, self.cache_disk_budget_mb >= 0, ">= 0"),
                  ("cache_fill", self.cache_fill, self.cache_fill in CACHE_FILLS, ", ".join(CACHE_FILLS)),
                  ("lr", self.lr, self.lr is None or self.lr > 0, "a positive number")]
        for name, value, ok, accepted in checks:
            if not ok:
                raise SpecError(field=name, value=value, accepted=accepted)
        for name in ("memory_budget_mb", "sparse_updates"):
            if getattr(self, name) is not None and self.method != "sparse":
                raise SpecError(field=name, value=getattr(self, name), accepted="a value with method 'sparse' only")
        budget = self.memory_budget_mb
        if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
            raise SpecError(field="memory_budget_mb", value=budget, accepted="a positive number of MB")
        if self.sparse_updates is not None:
            if isinstance(self.sparse_updates, str):
                raise SpecError(field="sparse_updates", value=self.sparse_updates,
                                accepted="a list of units (empty: the head only)")
            for unit in self.sparse_updates:
                parse_unit(unit)
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else finetune_method(self.method).default_lr


@dataclass
class EpochResult:
    epoch: int
    train_time_s: float
    train_cpu_s: float
    eval_time_s: float
    loss: float
    accuracy: float
    backbone_forward_samples: int  # samples whose states needed a live backbone forward this epoch
    saved_tensor_peak_bytes: int
    grad_bytes: int = 0  # gradients of the trainable parameters
    optimizer_state_bytes: int = 0  # AdamW's moments (and step counters)

    @property
    def backward_memory_bytes(self) -> int:
        return self.saved_tensor_peak_bytes + self.grad_bytes + self.optimizer_state_bytes


@dataclass
class FinetuneResult:
    method: str
    model: str
    dataset: str
    config: dict
    epochs: list[EpochResult] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    rss_before_training_bytes: int = 0
    peak_rss_bytes: int = 0
    cache: dict | None = None
    model_source: str = ""
    data_source: str = ""
    machine: str = ""
    method_info: dict | None = None  # what the method chose (sparse: its contribution-analysis selection)

    @property
    def total_train_time_s(self) -> float:
        return sum(e.train_time_s for e in self.epochs)

    @property
    def total_train_cpu_s(self) -> float:
        return sum(e.train_cpu_s for e in self.epochs)

    @property
    def final_accuracy(self) -> float:
        return self.epochs[-1].accuracy if self.epochs else float("nan")

    @property
    def saved_tensor_peak_bytes(self) -> int:
        return max((e.saved_tensor_peak_bytes for e in self.epochs), default=0)

    @property
    def backward_memory_bytes(self) -> int:
        """Saved tensors' peak + gradients + optimizer state, the largest over the epochs (measured)."""
        return max((e.backward_memory_bytes for e in self.epochs), default=0)

    def to_dict(self) -> dict:
        d = asdict(self)
        for e, row in zip(self.epochs, d["epochs"]):
            row["backward_memory_bytes"] = e.backward_memory_bytes
        return d | {"total_train_time_s": self.total_train_time_s,
                    "total_train_cpu_s": self.total_train_cpu_s,
                    "final_accuracy": self.final_accuracy,
                    "saved_tensor_peak_bytes": self.saved_tensor_peak_bytes,
                    "backward_memory_bytes": self.backward_memory_bytes}


class SavedTensorMeter:
    """Bytes the autograd graph keeps for backward (parameters excluded: they are resident anyway)."""

    def __init__(self, modules: list[nn.Module]):
        self._param_storages = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
        self._seen: dict[int, int] = {}
        self.peak = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._param_storages and ptr not in self._seen:
            self._seen[ptr] = storage.nbytes()
        return t

    @contextmanager
    def step(self):
        self._seen = {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield
        self.peak = max(self.peak, sum(self._seen.values()))


def machine_description() -> str:
    threads = torch.get_num_threads()
    return (f"{platform.machine()} {platform.processor() or ''} {psutil.cpu_count()} logical CPUs, "
            f"torch {torch.__version__} with {threads} thread(s), {platform.system()}").replace("  ", " ")


def load_task(config: FinetuneConfig, backbone: Backbone) -> EncodedTask:
    if config.dataset == "synthetic":
        return synthetic_token_task(len(backbone.tokenizer), config.n_train, config.n_test,
                                    seq=min(config.max_length, 16), seed=config.seed)
    text = load_tweet_sentiment(config.n_train, config.n_test, seed=config.seed)
    return encode_task(text, backbone.tokenizer, config.max_length)


class Finetuner:
    """One method's model, optimizer and (for PAC) activation cache; steps, evaluation and a whole run.
    `config.method` names the `FinetuneMethod` (mapped to its class here, once)."""

    def __init__(self, config: FinetuneConfig, backbone: Backbone | None = None, task: EncodedTask | None = None,
                 cache: ActivationCache | None = None):
        self.config = config.validate()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.backbone = backbone or load_backbone(config.model, seed=config.seed)
        self.backbone.freeze()
        self.task = task or load_task(config, self.backbone)
        self.method = finetune_method(config.method)
        self.config = config = self.method.plan(self, config)  # sparse under a budget: choose what trains
        torch.manual_seed(config.seed)
        parts = self.method.prepare(self.backbone, self.task.num_labels, config)
        self.adapters, self.head, self.trainable = parts.adapters, parts.head, parts.trainable
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=0.01)
        self.cache = cache
        if self.method.caches_states and cache is None:
            self.cache = self.make_cache()
        modules = [m for m in (self.backbone.model, self.adapters, self.head) if m is not None]
        self.meter = SavedTensorMeter(modules)
        self.backbone_forward_samples = 0

    def grad_bytes(self) -> int:
        return sum(p.grad.nbytes for p in self.trainable if p.grad is not None)

    def optimizer_state_bytes(self) -> int:
        return sum(v.nbytes for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v))

    def make_cache(self) -> ActivationCache:
        c = self.config
        fp = cache_fingerprint(self.backbone.model, self.backbone.tokenizer, self.task.fingerprint(),
                               c.cache_dtype, self.backbone.num_states)
        return ActivationCache(fp, int(c.cache_memory_budget_mb * MB), int(c.cache_disk_budget_mb * MB),
                               directory=c.cache_dir, dtype=c.cache_dtype)

    # ------------------------------------------------------------------ states (adapters, pac)
    def states(self, split: EncodedSplit, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed states [num_states, real tokens, hidden] and tokens per sample for these samples: from the
        cache where present, otherwise from a live no-grad backbone forward (then cached if the budget allows)."""
        samples = [split.input_ids[i] for i in indices]
        keys = split.keys(indices)
        per_sample: list[torch.Tensor | None] = [self.cache.get(k) if self.cache else None for k in keys]
        missing = [j for j, s in enumerate(per_sample) if s is None]
        store = DTYPES[self.config.cache_dtype] if self.cache is not None else torch.float32
        if missing:
            ids, mask = pad_batch([samples[j] for j in missing], self.task.pad_id)
            live = self.backbone.hidden_states(ids, mask)
            self.backbone_forward_samples += len(missing)
            for row, j in enumerate(missing):
                t = live[:, row, : len(samples[j])].to(store)
                if self.cache is not None:
                    self.cache.put(keys[j], t)
                per_sample[j] = t
        lengths = torch.tensor([len(s) for s in samples])
        return torch.cat(per_sample, dim=1).float(), lengths

    def fill_cache(self, split: EncodedSplit, batch_size: int | None = None) -> int:
        """Run the backbone once over the samples not yet cached, shortest first so that batches carry little
        padding (the backbone is frozen, so the order changes nothing but time). Stops when the budget is
        full: the rest is recomputed when needed. Returns how many samples were computed."""
        todo = sorted((i for i in range(len(split)) if split.key_offset + i not in self.cache),
                      key=lambda i: len(split.input_ids[i]))
        bs, done = batch_size or self.config.batch_size, 0
        for lo in range(0, len(todo), bs):
            chunk = todo[lo: lo + bs]
            ids, mask = pad_batch([split.input_ids[i] for i in chunk], self.task.pad_id)
            live = self.backbone.hidden_states(ids, mask)
            self.backbone_forward_samples += len(chunk)
            done += len(chunk)
            for row, i in enumerate(chunk):
                where = self.cache.put(split.key_offset + i, live[:, row, : len(split.input_ids[i])])
                if where == "overflow":
                    return done
        return done

    # ------------------------------------------------------------------ steps
    def logits(self, split: EncodedSplit, indices: list[int]) -> torch.Tensor:
        return self.method.logits(self, split, indices)

    def loss_and_backward(self, indices: list[int], global_batch_size: int) -> float:
        """Sum of this part's losses / the global batch size, so parts of one global batch add up to its mean."""
        labels = torch.tensor([self.task.train.labels[i] for i in indices])
        with self.meter.step():
            logits = self.logits(self.task.train, indices)
            loss = nn.functional.cross_entropy(logits, labels, reduction="sum") / global_batch_size
        loss.backward()
        return float(loss.detach())

    def train_step(self, indices: list[int], reduce_grads: Callable[[list[torch.Tensor]], None] | None = None,
                   global_batch_size: int | None = None) -> float:
        for p in self.trainable:  # every replica must hold a gradient to all-reduce, even with no samples
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.loss_and_backward(indices, global_batch_size or len(indices)) if indices else 0.0
        if reduce_grads is not None:
            reduce_grads([p.grad for p in self.trainable])
        self.optimizer.step()
        return loss

    @torch.no_grad()
    def evaluate(self, batch_size: int | None = None) -> float:
        split, bs = self.task.test, batch_size or self.config.batch_size
        correct = 0
        for lo in range(0, len(split), bs):
            idx = list(range(lo, min(lo + bs, len(split))))
            pred = self.logits(split, idx).argmax(-1)
            correct += int((pred == torch.tensor([split.labels[i] for i in idx])).sum())
        return 100.0 * correct / max(1, len(split))

    # ------------------------------------------------------------------ a whole run
    def run(self, on_step: Callable[[int, int, int], None] | None = None,
            on_epoch: Callable[[EpochResult], None] | None = None,
            shares: list[list[int]] | None = None) -> FinetuneResult:
        """Train all epochs, evaluating after each. `shares` reproduces the global batches of a data-parallel
        pool whose devices own these sample indices (see `batch_schedule`)."""
        c = self.config
        result = FinetuneResult(method=c.method, model=c.model, dataset=self.task.name, config=asdict(c),
                                trainable_params=sum(p.numel() for p in self.trainable),
                                total_params=sum(p.numel() for p in self.backbone.model.parameters())
                                + sum(p.numel() for m in (self.adapters, self.head) if m for p in m.parameters()),
                                model_source=self.backbone.source, data_source=self.task.source,
                                machine=machine_description())
        result.rss_before_training_bytes = psutil.Process().memory_info().rss
        self.method.before_training(self)
        for epoch in range(1, c.epochs + 1):
            schedule = batch_schedule(len(self.task.train), c.batch_size, epoch, c.seed, shares)
            self.meter.peak, self.backbone_forward_samples = 0, 0
            wall, cpu, losses = time.perf_counter(), time.process_time(), []
            if self.cache is not None and epoch == 1 and c.cache_fill == "sorted":
                self.fill_cache(self.task.train)
            for step, parts in enumerate(schedule):
                losses.append(self.train_step([i for part in parts for i in part]))
                if on_step:
                    on_step(epoch, step + 1, len(schedule))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            forwards = self.backbone_forward_samples
            if self.cache is not None and epoch == 1:
                self.cache.seal()
            t0 = time.perf_counter()
            accuracy = self.evaluate() if c.eval_each_epoch or epoch == c.epochs else float("nan")
            er = EpochResult(epoch=epoch, train_time_s=wall, train_cpu_s=cpu, eval_time_s=time.perf_counter() - t0,
                             loss=sum(losses) / len(losses), accuracy=accuracy, backbone_forward_samples=forwards,
                             saved_tensor_peak_bytes=self.meter.peak, grad_bytes=self.grad_bytes(),
                             optimizer_state_bytes=self.optimizer_state_bytes())
            result.epochs.append(er)
            if on_epoch:
                on_epoch(er)
        if self.cache is not None:
            self.cache.seal()
            result.cache = self.cache.stats().to_dict()
        result.method_info = self.method.report()
        result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return result


def finetune(config: FinetuneConfig, **callbacks) -> FinetuneResult:
    """Load, train and evaluate one method; the cache (if any) is closed afterwards."""
    tuner = Finetuner(config)
    try:
        return tuner.run(**callbacks)
    finally:
        if tuner.cache is not None:
            tuner.cache.close()


def _isolated_child(config: FinetuneConfig, queue) -> None:
    try:
        queue.put(("ok", finetune(config).to_dict()))
    except BaseException as exc:  # report any failure to the parent instead of leaving it waiting
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def finetune_isolated(config: FinetuneConfig) -> dict:
    """`finetune` in a fresh process, so that its peak RSS and timings are its own; returns `to_dict()`."""
    import multiprocessing as mp
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_isolated_child, args=(config, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{config.method} failed: {payload}")
    return payload
