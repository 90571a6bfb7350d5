"""What each unit's precision costs in accuracy: every unit alone in each low precision, the rest fp32.

Policies (MLMP, ours) rank units by these numbers; measuring them takes one evaluation per unit and
precision, so the table is cached on disk and reused while the task, the emulation and the split match.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from edgepool.atomic import write_text_atomic
from edgepool.precision.emulate import Evaluator, Progress
from edgepool.precision.placement import CPU_PRECISION

FORMAT = 1


@dataclass
class SensitivityTable:
    """Per low precision, per unit: accuracy drop in points vs fp32 (may be negative), the fraction of
    inputs whose prediction changes, and the mean KL(softmax fp32 || softmax variant)."""

    task: str
    split: str
    unit_names: list[str]
    precisions: list[str]
    fp32_accuracy: float
    samples: int
    drops: dict[str, list[float]]
    flips: dict[str, list[float]]
    kl: dict[str, list[float]]
    fingerprint: dict = field(default_factory=dict)  # what the numbers depend on; a cached table must match

    def drop(self, unit: int, precision: str) -> float:
        if precision == CPU_PRECISION:
            return 0.0
        return self.drops[precision][unit]

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityTable":
        data = dict(data)
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"sensitivity table format is not {FORMAT}")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityTable":
        return cls.from_dict(json.loads(Path(path).read_text()))


def fingerprint(evaluator: Evaluator, split: str) -> dict:
    """fp32 accuracy, sample count, a hash of the fp32 predictions (robust to last-bit float noise across
    machines, unlike a hash of logits) and the emulation settings."""
    base = (CPU_PRECISION,) * evaluator.task.num_units
    predictions = evaluator.logits(base, split).argmax(1).to(torch.int64)  # [N]
    return {"samples": len(predictions), "fp32_accuracy": evaluator.accuracy(base, split),
            "predictions_sha1": hashlib.sha1(predictions.numpy().tobytes()).hexdigest(),
            "emulation": evaluator.emulator.config()}


def measure_sensitivity(evaluator: Evaluator, precisions: tuple[str, ...], split: str = "validation",
                        progress: Progress | None = None) -> SensitivityTable:
    """One evaluation per unit x precision; the all-fp32 run first caches every fp32 prefix, so unit i's
    placements start at unit i."""
    task, n = evaluator.task, evaluator.task.num_units
    precisions = tuple(p for p in precisions if p != CPU_PRECISION)
    base = (CPU_PRECISION,) * n
    ref = evaluator.logits(base, split)  # [N, classes]
    ref_log, ref_pred = F.log_softmax(ref.float(), 1), ref.argmax(1)
    labels = task.split(split).labels  # [N]
    fp32_acc = (ref_pred == labels).float().mean().item()
    drops = {p: [] for p in precisions}
    flips = {p: [] for p in precisions}
    kl = {p: [] for p in precisions}
    total, done = n * len(precisions), 0
    for i in range(n):
        for p in precisions:
            placement = base[:i] + (p,) + base[i + 1:]
            logits = evaluator.logits(placement, split)
            pred = logits.argmax(1)
            drops[p].append(100.0 * (fp32_acc - (pred == labels).float().mean().item()))
            flips[p].append((pred != ref_pred).float().mean().item())
            kl[p].append(F.kl_div(F.log_softmax(logits.float(), 1), ref_log, log_target=True,
                                  reduction="batchmean").item())
            done += 1
            if progress:
                progress(f"sensitivity {task.unit_names[i]} {p}", done, total)
    return SensitivityTable(task=task.name, split=split, unit_names=list(task.unit_names),
                            precisions=list(precisions), fp32_accuracy=fp32_acc, samples=len(ref),
                            drops=drops, flips=flips, kl=kl, fingerprint=fingerprint(evaluator, split))


def cached_sensitivity(evaluator: Evaluator, precisions: tuple[str, ...], path: Path | None,
                       split: str = "validation", progress: Progress | None = None) -> SensitivityTable:
    """The table at `path` if it matches this task, emulation and split; else measure it and write it there.
    Checking the match costs one fp32 evaluation (free when the evaluator already ran it)."""
    precisions = tuple(p for p in precisions if p != CPU_PRECISION)
    if path is not None and Path(path).exists():
        try:
            table = SensitivityTable.load(path)
        except (ValueError, TypeError, KeyError):  # unreadable or an old format: measure again
            table = None
        if table is not None and _matches(table, evaluator, precisions, split):
            return table
    table = measure_sensitivity(evaluator, precisions, split, progress)
    if path is not None:
        table.save(path)
    return table


def _matches(table: SensitivityTable, evaluator: Evaluator, precisions: tuple[str, ...], split: str) -> bool:
    task = evaluator.task
    if (table.task, table.unit_names, tuple(table.precisions), table.split) != \
            (task.name, list(task.unit_names), precisions, split):
        return False
    return table.fingerprint == json.loads(json.dumps(fingerprint(evaluator, split)))


def sensitivity_rows(table: SensitivityTable) -> list[list[str]]:
    """A header row, then one row per unit: drop (points), flips (%) and KL per precision."""
    header = ["unit"] + [f"{p} {col}" for p in table.precisions for col in ("drop pts", "flips %", "KL")]
    rows = [header]
    for i, name in enumerate(table.unit_names):
        row = [name]
        for p in table.precisions:
            row += [f"{table.drops[p][i]:+.2f}", f"{100 * table.flips[p][i]:.1f}", f"{table.kl[p][i]:.2e}"]
        rows.append(row)
    return rows
