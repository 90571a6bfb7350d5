"""A compiled training step (PockEngine compiles its training graph ahead of time) against the eager one.

`torch.compile` takes the forward+backward (the loss function; AOTAutograd compiles its backward too) and
the optimizer step. Batches are padded to one fixed length so the graph compiles once. Inductor needs a C++
compiler; when compiling with it fails the step falls back to the "aot_eager" backend, then to eager, and the
result records which backend ran and why: it never crashes a run.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from edgepool.finetune.methods import Finetuner

BACKENDS = ("inductor", "aot_eager")


@dataclass
class CompiledStep:
    backend: str  # the backend that ran ("eager" when every compile failed)
    eager_step_s: float  # median wall time of one eager step (warm-up steps excluded)
    compiled_step_s: float  # median wall time of one compiled step (warm-up steps excluded)
    compile_time_s: float  # the warm-up compiled steps, compilation included
    eager_losses: list[float]
    compiled_losses: list[float]
    batch_size: int
    seq_len: int
    failures: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run

    @property
    def speedup(self) -> float:
        return self.eager_step_s / self.compiled_step_s if self.compiled_step_s > 0 else float("nan")

    @property
    def max_loss_diff(self) -> float:
        return max((abs(a - b) for a, b in zip(self.eager_losses, self.compiled_losses)), default=0.0)

    def to_dict(self) -> dict:
        return asdict(self) | {"speedup": self.speedup, "max_loss_diff": self.max_loss_diff}


def fixed_batch(tuner: Finetuner, indices: list[int], seq_len: int) -> tuple[torch.Tensor, ...]:
    """ids, mask [batch, seq_len] (truncated or right-padded to exactly seq_len) and labels [batch]."""
    split = tuner.task.train
    ids = torch.full((len(indices), seq_len), tuner.task.pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), seq_len), dtype=torch.long)
    for row, i in enumerate(indices):
        s = split.input_ids[i][:seq_len]
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask, torch.tensor([split.labels[i] for i in indices])


def _loss_fn(tuner: Finetuner) -> Callable[..., torch.Tensor]:
    def loss(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = tuner.head(tuner.backbone.last_hidden(ids, mask), mask)  # [batch, labels]
        return nn.functional.cross_entropy(logits, labels)
    return loss


def _run(tuner: Finetuner, batches: list[tuple[torch.Tensor, ...]], backend: str | None
         ) -> tuple[list[float], list[float]]:
    """Train on `batches` in order; eager when backend is None. Returns (losses, step wall times)."""
    loss_fn, opt_step = _loss_fn(tuner), tuner.optimizer.step
    if backend is not None:
        loss_fn = torch.compile(loss_fn, backend=backend, dynamic=False)
        opt_step = torch.compile(tuner.optimizer.step, backend=backend, dynamic=False)
    tuner.method.before_training(tuner)
    losses, times = [], []
    for ids, mask, labels in batches:
        t0 = time.perf_counter()
        tuner.optimizer.zero_grad(set_to_none=False)
        loss = loss_fn(ids, mask, labels)
        loss.backward()
        opt_step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return losses, times


def _clone(tuner: Finetuner) -> Finetuner:
    """A Finetuner built the same way (same seed: same head init) on a copy of the backbone."""
    from edgepool.finetune.methods import Finetuner

    backbone = replace(tuner.backbone, model=copy.deepcopy(tuner.backbone.model))
    return Finetuner(replace(tuner.config, memory_budget_mb=None), backbone=backbone, task=tuner.task)


def compare_compiled(tuner: Finetuner, steps: int = 8, seq_len: int | None = None,
                     backends: tuple[str, ...] = BACKENDS, warmup: int = 2) -> CompiledStep:
    """Eager vs compiled training steps from the same start on the same fixed-shape batches. `tuner` itself
    is not trained: both sides run on fresh copies. The first `warmup` steps of each are left out of the
    medians (compilation; the optimizer's state appears after step 1, which recompiles its step once)."""
    c = tuner.config
    seq_len = seq_len or c.max_length
    n, bs = len(tuner.task.train), c.batch_size
    batches = [fixed_batch(tuner, [(s * bs + j) % n for j in range(bs)], seq_len)
               for s in range(max(warmup + 1, steps))]
    eager_losses, eager_times = _run(_clone(tuner), batches, None)
    eager_s = statistics.median(eager_times[warmup:])
    failures: dict[str, str] = {}
    for backend in backends:
        try:
            losses, times = _run(_clone(tuner), batches, backend)
        except Exception as exc:  # a missing compiler or an unsupported op: try the next backend
            failures[backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            torch._dynamo.reset()
            continue
        torch._dynamo.reset()
        return CompiledStep(backend, eager_s, statistics.median(times[warmup:]), sum(times[:warmup]),
                            eager_losses, losses, bs, seq_len, failures)
    return CompiledStep("eager", eager_s, eager_s, 0.0, eager_losses, eager_losses, bs, seq_len, failures)
