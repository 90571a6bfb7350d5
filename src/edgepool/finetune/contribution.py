"""Contribution analysis (tiny-training style): which sparse units are worth their backward memory.

Each candidate unit (sparse.py) gets a short calibration run from the same start (same head init, same
batches): a few steps on a calibration part of the train split, then accuracy on a held-out part of the
train split (never the test split). Its gain is the accuracy over head-only; its cost is the measured
backward memory (saved tensors' peak + gradients + AdamW state) over head-only. Candidates are ranked by
gain per byte and taken greedily while the summed extra memory fits the budget; the selection is then
measured as one run and, while it does not fit, its worst item (lowest gain per byte) is dropped. Units share
saved activations, so the sum over-estimates: the remaining positive candidates are then tried in rank order
and kept when the measured selection with them still fits.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable

from edgepool.errors import SpecError
from edgepool.finetune.data import EncodedSplit, EncodedTask
from edgepool.finetune.sparse import DEFAULT_CANDIDATES, blocks, parse_unit, selected_parameters

if TYPE_CHECKING:
    from edgepool.finetune.backbone import Backbone
    from edgepool.finetune.methods import FinetuneConfig

MB = 1 << 20
Progress = Callable[[int, int, str], None]  # (done, total, candidate now measured)


@dataclass
class Candidate:
    name: str
    params: int  # backbone parameters the unit trains


@dataclass
class Contribution:
    """One calibration run: `names` trained (plus the head)."""
    names: list[str]
    params: int
    accuracy: float  # % on the held-out calibration part of the train split
    gain: float  # accuracy points over head-only
    saved_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    step_time_s: float  # median wall time of one training step
    extra_bytes: int = 0  # memory over head-only
    gain_per_mb: float = 0.0
    gain_per_s: float = 0.0  # gain per second of step time

    @property
    def memory_bytes(self) -> int:
        return self.saved_bytes + self.grad_bytes + self.optimizer_bytes

    def to_dict(self) -> dict:
        return asdict(self) | {"memory_bytes": self.memory_bytes}


@dataclass
class Selection:
    names: list[str]
    budget_bytes: int
    measured: Contribution  # the final selection, measured as one run
    baseline: Contribution  # head only
    ranked: list[Contribution]  # candidates, best gain per byte first
    dropped: list[str] = field(default_factory=list)  # removed after re-measuring over budget
    added: list[str] = field(default_factory=list)  # added into the measured slack after the greedy pass
    calibration: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.measured.memory_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        return {"names": self.names, "budget_bytes": self.budget_bytes, "fits": self.fits,
                "memory_bytes": self.measured.memory_bytes, "measured": self.measured.to_dict(),
                "baseline": self.baseline.to_dict(), "ranked": [c.to_dict() for c in self.ranked],
                "dropped": self.dropped, "added": self.added, "calibration": self.calibration}


def calibration_task(task: EncodedTask, n_train: int, n_eval: int) -> EncodedTask:
    """Two disjoint parts of the *train* split: calibration training and held-out calibration eval."""
    tr = task.train
    n_train = min(n_train, max(1, (2 * len(tr)) // 3))
    n_eval = min(n_eval, len(tr) - n_train)
    if n_eval < 1:
        raise SpecError(field="n_train", value=len(tr), accepted="at least 2 samples for a calibration split")
    fit = EncodedSplit(tr.input_ids[:n_train], tr.labels[:n_train], key_offset=0)
    held = EncodedSplit(tr.input_ids[n_train:n_train + n_eval], tr.labels[n_train:n_train + n_eval],
                        key_offset=n_train)
    return replace(task, name=f"{task.name}-calibration", train=fit, test=held)


def candidates(model, names: list[str] | None) -> list[Candidate]:
    """The candidate units for this model (lastK beyond its depth and empty units are left out)."""
    depth = len(blocks(model))
    out = []
    for name in names if names is not None else DEFAULT_CANDIDATES:
        unit = parse_unit(name)
        if unit.last is not None and unit.last > depth:
            continue
        params = sum(p.numel() for p in selected_parameters(model, [name]).values())
        if params:
            out.append(Candidate(name, params))
    return out


def measure(config: FinetuneConfig, backbone: Backbone, task: EncodedTask, names: list[str], steps: int,
            evaluate: bool = True, lr_scale: float = 1.0) -> Contribution:
    """Train `names` (+ head) for `steps` steps on `task.train` from the config's seed; measure memory, step
    time and (when `evaluate`) accuracy on `task.test`. The backbone is copied, never changed."""
    from edgepool.finetune.methods import Finetuner

    cfg = replace(config, method="sparse", sparse_updates=list(names), memory_budget_mb=None, epochs=1,
                  lr=config.learning_rate * lr_scale)
    tuner = Finetuner(cfg, backbone=replace(backbone, model=copy.deepcopy(backbone.model)), task=task)
    tuner.method.before_training(tuner)
    n, bs = len(task.train), cfg.batch_size
    times = []
    for s in range(steps):
        lo = (s * bs) % n
        idx = [(lo + j) % n for j in range(min(bs, n))]
        t0 = time.perf_counter()
        tuner.train_step(idx)
        times.append(time.perf_counter() - t0)
    accuracy = tuner.evaluate() if evaluate else float("nan")
    return Contribution(names=list(names), params=sum(p.numel() for p in tuner.trainable), accuracy=accuracy,
                        gain=0.0, saved_bytes=tuner.meter.peak, grad_bytes=tuner.grad_bytes(),
                        optimizer_bytes=tuner.optimizer_state_bytes(), step_time_s=statistics.median(times))


def greedy(ranked: list[Contribution], base_bytes: int, budget: int,
           covers: Callable[[Contribution], set]) -> list[Contribution]:
    """Best gain per byte first: take a candidate with a positive gain that adds parameters not yet covered
    while head-only memory + the summed extra memory of those taken fits the budget (an over-estimate when
    units share saved activations: the final selection is re-measured anyway)."""
    chosen, covered, estimate = [], set(), base_bytes
    for c in sorted(ranked, key=lambda c: c.gain_per_mb, reverse=True):
        params = covers(c)
        if c.gain <= 0 or params <= covered or estimate + c.extra_bytes > budget:
            continue
        chosen.append(c)
        covered |= params
        estimate += c.extra_bytes
    # a unit another chosen one already covers adds nothing (attn-out-last1 inside last1): name it once
    return [c for c in chosen if not covers(c) <= set().union(*(covers(o) for o in chosen if o is not c))]


def select_updates(config: FinetuneConfig, backbone: Backbone, task: EncodedTask, *, steps: int = 6,
                   n_calibration: int = 192, n_held_out: int = 160, lr_scale: float = 3.0,
                   progress: Progress | None = None) -> Selection:
    """Rank `config.sparse_updates` (or the default candidates) and choose under `config.memory_budget_mb`.
    The calibration runs use `lr_scale` times the run's learning rate: a few steps at the run's own rate
    barely move the weights, so every gain would read as noise around zero."""
    if config.memory_budget_mb is None:
        raise SpecError(field="memory_budget_mb", value=None, accepted="a positive number of MB")
    budget = int(config.memory_budget_mb * MB)
    cal = calibration_task(task, n_calibration, n_held_out)
    cands = candidates(backbone.model, config.sparse_updates)
    total = len(cands) + 2
    say = progress or (lambda done, total, name: None)
    say(0, total, "head only")
    base = measure(config, backbone, cal, [], steps, lr_scale=lr_scale)
    if base.memory_bytes > budget:
        raise SpecError(field="memory_budget_mb", value=config.memory_budget_mb,
                        accepted=f">= {base.memory_bytes / MB:.3f} (head-only training needs that much)")
    ranked = []
    for i, cand in enumerate(cands, start=1):
        say(i, total, cand.name)
        c = measure(config, backbone, cal, [cand.name], steps, lr_scale=lr_scale)
        c.gain = c.accuracy - base.accuracy
        c.extra_bytes = max(1, c.memory_bytes - base.memory_bytes)
        c.gain_per_mb = c.gain / (c.extra_bytes / MB)
        c.gain_per_s = c.gain / max(1e-9, c.step_time_s)
        ranked.append(c)
    ranked.sort(key=lambda c: c.gain_per_mb, reverse=True)

    def covers(c: Contribution) -> set[str]:
        return set(selected_parameters(backbone.model, c.names))

    def names(chosen: list[Contribution]) -> list[str]:
        return [n for c in chosen for n in c.names]

    def memory(chosen: list[Contribution]) -> int:  # measured: 2 steps (AdamW's state exists after the first)
        return measure(config, backbone, cal, names(chosen), 2, evaluate=False).memory_bytes

    chosen = greedy(ranked, base.memory_bytes, budget, covers)
    say(total - 1, total, "selection")
    dropped, added = [], []
    while chosen and memory(chosen) > budget:
        worst = min(chosen, key=lambda c: c.gain_per_mb)
        chosen.remove(worst)
        dropped += worst.names
    # the greedy estimate adds up activations that units share; with the measured slack, try the rest in order
    for c in ranked:
        if c.gain > 0 and c not in chosen and not covers(c) <= set().union(*map(covers, chosen)):
            if memory(chosen + [c]) <= budget:
                chosen.append(c)
                added += c.names
    chosen = [c for c in chosen if not covers(c) <= set().union(*(covers(o) for o in chosen if o is not c))]
    final = measure(config, backbone, cal, names(chosen), steps, lr_scale=lr_scale)
    final.gain = final.accuracy - base.accuracy
    say(total, total, "done")
    return Selection(names=names(chosen), budget_bytes=budget, measured=final, baseline=base,
                     ranked=ranked, dropped=dropped, added=added,
                     calibration={"n_train": len(cal.train), "n_held_out": len(cal.test), "steps": steps,
                                  "batch_size": config.batch_size, "lr": config.learning_rate * lr_scale,
                                  "split": "train split only (held-out part), never the test split"})
