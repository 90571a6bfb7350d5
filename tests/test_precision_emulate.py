"""Emulated precisions on toy tasks: a small CNN trained on scikit-learn digits, a masked token model."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edgepool.precision.emulate import Evaluator, PrecisionEmulator
from edgepool.precision.sensitivity import (SensitivityTable, cached_sensitivity, measure_sensitivity,
                                            sensitivity_rows)
from edgepool.precision.tasks import Batch, PrecisionTask, Split

FP32 = ("fp32",) * 4


def _split(x: torch.Tensor, y: torch.Tensor, size: int = 100) -> Split:
    return Split([Batch(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)])


@pytest.fixture(scope="module")
def digits_task() -> PrecisionTask:
    """A 4-unit CNN trained for about a second on 8x8 digits (about 98% accurate)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    y = torch.tensor(data.target)
    order = torch.randperm(len(y))
    x, y = x[order], y[order]
    units = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),  # [N, 16, 8, 8]
        nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()),  # [N, 32, 4, 4]
        nn.Sequential(nn.Flatten(), nn.Linear(512, 64), nn.ReLU()),  # [N, 64]
        nn.Linear(64, 10),  # [N, 10]
    )
    optimizer = torch.optim.Adam(units.parameters(), lr=2e-2)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(units(x[:1000]), y[:1000]).backward()
        optimizer.step()
    units.eval()
    return PrecisionTask(name="toy-digits", units=units, unit_names=["conv1", "conv2", "fc1", "head"],
                         calibration=_split(x[1000:1200], y[1000:1200]),
                         validation=_split(x[1200:1500], y[1200:1500]), test=_split(x[1500:], y[1500:]),
                         num_classes=10, source="scikit-learn digits, trained in the test")


@pytest.fixture(scope="module")
def emulator(digits_task) -> PrecisionEmulator:
    return PrecisionEmulator(digits_task)


def test_fp32_variant_is_the_unit(digits_task, emulator):
    for i, unit in enumerate(digits_task.units):
        assert emulator.variant(i, "fp32") is unit
    evaluator = Evaluator(digits_task, emulator)
    assert torch.equal(evaluator.logits(FP32), digits_task.logits(digits_task.validation))


def test_int8_changes_logits_a_little_and_keeps_accuracy(digits_task):
    before = {k: v.clone() for k, v in digits_task.units.state_dict().items()}
    emulator = PrecisionEmulator(digits_task, ("int8",), observer="minmax")
    for k, v in digits_task.units.state_dict().items():  # the task's units stay fp32, untouched
        assert torch.equal(v, before[k])
    for name, emu in (("minmax", emulator), ("histogram", None)):
        evaluator = Evaluator(digits_task, emu or PrecisionEmulator(digits_task, ("int8",)))
        ref, q = evaluator.logits(FP32), evaluator.logits(("int8",) * 4)
        assert not torch.equal(ref, q)
        assert (q - ref).norm() / ref.norm() < 0.1, name
        assert evaluator.accuracy(FP32) > 0.85
        assert evaluator.accuracy(("int8",) * 4) > evaluator.accuracy(FP32) - 0.03, name


def test_int8_weights_have_at_most_255_levels_per_channel(digits_task, emulator):
    gemms = 0
    for i, unit in enumerate(digits_task.units):
        original = dict(unit.named_modules())
        for name, module in emulator.variant(i, "int8").named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                gemms += 1
                rows = module.weight.detach().flatten(1)  # [out, in * kh * kw]
                assert max(len(torch.unique(r)) for r in rows) <= 255
                assert not torch.equal(module.weight, original[name].weight)  # quantized: not the fp32 weights
    assert gemms == 4


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_rounded_variants_are_representable(digits_task, emulator, precision, dtype):
    evaluator = Evaluator(digits_task, emulator)
    seen = []
    variant = emulator.variant(1, precision)
    conv = variant[0]
    handle = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        outs = evaluator.activations((precision, precision), "validation")
    finally:
        handle.remove()
    for t in outs + seen + [conv.weight.detach(), conv.bias.detach()]:
        assert torch.equal(t, t.to(dtype).float())
    assert evaluator.accuracy((precision,) * 4) > evaluator.accuracy(FP32) - 0.02


def test_prefix_cache_is_exact_and_saves_units(digits_task, emulator):
    cached, plain = Evaluator(digits_task, emulator), Evaluator(digits_task, emulator, cache_bytes=0)
    placements = [("int8", "fp32", "fp32", "fp32"), ("int8", "fp32", "fp16", "fp32"),
                  ("int8", "fp32", "fp16", "int8"), ("bf16", "int8", "fp16", "fp32"), FP32]
    for p in placements:
        assert torch.equal(cached.logits(p), plain.logits(p))
        assert torch.equal(cached.correct(p, "test"), plain.correct(p, "test"))
    assert cached.evaluations == plain.evaluations == 2 * len(placements)
    assert plain.units_run == 4 * 2 * len(placements)
    assert cached.units_run < plain.units_run
    before = cached.units_run
    cached.logits(("int8", "fp32", "bf16", "fp32"))  # shares ("int8", "fp32") with the first placement
    assert cached.units_run == before + 2
    cached.logits(("int8", "fp32", "bf16", "fp32"))  # a logits cache hit: nothing runs
    assert cached.units_run == before + 2 and cached.evaluations == 2 * len(placements) + 1


def test_sensitivity_round_trips_and_is_cached(digits_task, emulator, tmp_path):
    evaluator = Evaluator(digits_task, emulator)
    table = measure_sensitivity(evaluator, ("int8", "fp16"))
    assert evaluator.evaluations == 1 + 2 * 4
    assert table.drop(2, "fp32") == 0.0 and abs(table.drop(0, "fp16")) < 2
    assert all(0 <= f <= 1 for f in table.flips["int8"]) and all(k >= -1e-6 for k in table.kl["int8"])
    assert SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    assert len(sensitivity_rows(table)) == 1 + 4

    path = tmp_path / "sens.json"
    calls = []
    first = cached_sensitivity(evaluator, ("int8", "fp16"), path, progress=lambda *a: calls.append(a))
    assert path.exists() and first == table and calls  # measured (logits cache hits) and written
    runs = evaluator.evaluations
    again = cached_sensitivity(evaluator, ("int8", "fp16"), path)
    assert again == table and evaluator.evaluations == runs

    fresh = Evaluator(digits_task, emulator)
    assert cached_sensitivity(fresh, ("int8", "fp16"), path) == table
    assert fresh.evaluations == 1  # only the fp32 run the fingerprint needs
    assert cached_sensitivity(fresh, ("int8",), path).precisions == ["int8"]  # mismatch: measured again
    assert fresh.evaluations == 1 + 4


def test_token_model_reads_its_mask_through_the_copies():
    """Variants share the context holder `set_context` writes into, so masks reach every copy."""
    torch.manual_seed(0)
    ctx = SimpleNamespace(mask=None)

    class MaskedMean(nn.Module):
        def __init__(self, holder):
            super().__init__()
            self.holder = holder

        def forward(self, h):  # [N, T, D] -> [N, D]
            m = self.holder.mask.unsqueeze(-1).float()
            return (h * m).sum(1) / m.sum(1)

    ids = torch.randint(1, 50, (120, 12))
    mask = (torch.arange(12) < torch.randint(2, 13, (120, 1))).long()
    labels = torch.randint(0, 3, (120,))
    split = Split([Batch(ids[i:i + 40], labels[i:i + 40], mask[i:i + 40]) for i in range(0, 120, 40)])
    task = PrecisionTask(name="toy-tokens", units=nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16),
                                                                MaskedMean(ctx), nn.Linear(16, 3)),
                         unit_names=["embed", "proj", "pool", "head"], calibration=split, validation=split,
                         test=split, num_classes=3, source="random",
                         set_context=lambda batch: setattr(ctx, "mask", batch.mask))
    emulator = PrecisionEmulator(task)  # checks copies against the units on the first batches
    assert emulator.variant(2, "int8").holder is ctx
    cached, plain = Evaluator(task, emulator), Evaluator(task, emulator, cache_bytes=0)
    assert torch.equal(cached.logits(FP32), task.logits(task.validation))
    for p in [("int8",) * 4, ("int8", "fp16", "fp32", "bf16"), ("int8", "fp16", "int8", "int8")]:
        assert torch.equal(cached.logits(p), plain.logits(p))
    assert (cached.logits(("int8",) * 4) - cached.logits(FP32)).abs().max() < 0.1
