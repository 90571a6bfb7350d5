"""Run any unit of a `PrecisionTask` in a low precision, for real, on this CPU (emulation).

`PrecisionEmulator` builds, per unit and precision, a variant module that computes what an accelerator
computing in that precision would compute; `Evaluator` runs placements (one precision per unit) over a
split with a prefix cache, so placements that share their first units share that work.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from typing import Callable, Hashable

import torch
from torch import nn
from torch.ao.quantization import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

from edgepool.errors import SpecError
from edgepool.precision.placement import CPU_PRECISION
from edgepool.precision.tasks import Batch, PrecisionTask

LOW_PRECISIONS = ("int8", "fp16", "bf16")
ROUNDED = {"fp16": torch.float16, "bf16": torch.bfloat16}
GEMMS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # weight [out, ...]: output channels on axis 0
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127  # symmetric restricted range: 255 levels, zero exact, sign-symmetric
ACT_QMIN, ACT_QMAX = 0, 255  # quint8, affine
OBSERVERS = {"histogram": HistogramObserver, "minmax": MinMaxObserver}

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------- quantizers

class _Round:
    """fp16 / bf16 storage: round a tensor to the dtype and back (the math stays fp32, as on tensor cores)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, x):
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            return x
        return x.to(self.dtype).to(x.dtype)


class _ActInt8:
    """One activation tensor in per-tensor affine quint8: observes fp32 values while calibrating, then
    fake-quantizes with the fitted (scale, zero point). Never observed (module not called) -> left as is."""

    def __init__(self, observer: type):
        self.observer = observer(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        self.calibrating, self.seen = True, False
        self.scale: float | None = None
        self.zero_point = 0

    def __call__(self, x):
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            return x
        if self.calibrating:
            self.observer(x.detach().float())
            self.seen = True
            return x
        if self.scale is None:
            return x
        return torch.fake_quantize_per_tensor_affine(x.float(), self.scale, self.zero_point,
                                                     ACT_QMIN, ACT_QMAX).to(x.dtype)

    def freeze(self) -> None:
        if self.seen:
            scale, zero_point = self.observer.calculate_qparams()
            self.scale, self.zero_point = float(scale), int(zero_point)
        self.calibrating, self.observer = False, None  # histograms are not needed any more


def _int8_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric qint8, quantized and dequantized once: w [out, ...] -> same shape."""
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX)
    observer(w.detach())
    scale, zero_point = observer.calculate_qparams()
    return torch.fake_quantize_per_channel_affine(w.detach(), scale.float(), zero_point.to(torch.int32), 0,
                                                  WEIGHT_QMIN, WEIGHT_QMAX)


def _input_hook(quantize: Callable):
    def hook(module, args):
        return (quantize(args[0]),) + tuple(args[1:])
    return hook


def _output_hook(quantize: Callable):
    def hook(module, args, output):
        return quantize(output)
    return hook


# ---------------------------------------------------------------------------------------------- variants

_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def copy_unit(unit: nn.Module) -> nn.Module:
    """A deep copy of the module tree and its tensors that shares every other attribute (a context holder
    that `task.set_context` writes the attention mask into, configs, callables) with the original."""
    memo: dict[int, object] = {}
    for module in unit.modules():
        for name, value in vars(module).items():
            if name not in _MODULE_INTERNALS and not isinstance(value, nn.Parameter):
                memo[id(value)] = value
    return copy.deepcopy(unit, memo)


def _int8_variant(unit: nn.Module, observer: type) -> tuple[nn.Module, list[_ActInt8]]:
    """Copy with fp32 weights and observing hooks; `freeze` later fixes ranges and fake-quantizes weights."""
    variant = copy_unit(unit)
    quantizers = []
    for module in variant.modules():
        if isinstance(module, GEMMS):
            quantizers.append(_ActInt8(observer))
            module.register_forward_pre_hook(_input_hook(quantizers[-1]))
    quantizers.append(_ActInt8(observer))
    variant.register_forward_hook(_output_hook(quantizers[-1]))
    return variant, quantizers


@torch.no_grad()
def _freeze_int8(variant: nn.Module, quantizers: list[_ActInt8]) -> None:
    for q in quantizers:
        q.freeze()
    for module in variant.modules():
        if isinstance(module, GEMMS + (nn.Embedding,)):
            module.weight.copy_(_int8_weight(module.weight))


@torch.no_grad()
def _rounded_variant(unit: nn.Module, dtype: torch.dtype) -> nn.Module:
    variant = copy_unit(unit)
    rnd = _Round(dtype)
    for module in variant.modules():
        if isinstance(module, GEMMS + (nn.Embedding,)):
            for p in (module.weight, getattr(module, "bias", None)):
                if p is not None:
                    p.copy_(rnd(p))
        if isinstance(module, GEMMS):
            module.register_forward_pre_hook(_input_hook(rnd))
    variant.register_forward_hook(_output_hook(rnd))
    return variant


class PrecisionEmulator:
    """Per unit and precision, a module computing what an accelerator in that precision computes.

    int8 emulates post-training static quantization with fake quantization: weights of every Conv/Linear
    (and Embedding tables) per output channel, symmetric qint8 on [-127, 127] (`PerChannelMinMaxObserver`);
    the input activation of every Conv/Linear and the unit's output per tensor, affine quint8, with ranges
    fitted on the task's calibration split with the fp32 model's own activations by `HistogramObserver`
    (default: it minimises the quantization error, so outliers do not waste the 256 levels; slower to
    fit than "minmax", `MinMaxObserver`, but calibration runs once). Accumulation, biases and the
    elementwise ops between GEMMs (norms, activations, softmax, residual adds) stay fp32, whereas a real NPU
    also runs many of those in int8/int16: the emulated accuracy loss is a lower bound.

    fp16 / bf16 round weights and biases of every Conv/Linear/Embedding, the input of every Conv/Linear and
    the unit's output to the dtype (cast there and back); the math runs in fp32, like tensor cores'
    fp32 accumulation. Fast and works for every op on the CPU.

    "fp32" is the task's own unit. Variants are copies: the task's units stay untouched and fp32.
    """

    def __init__(self, task: PrecisionTask, precisions: tuple[str, ...] = LOW_PRECISIONS,
                 observer: str = "histogram", progress: Progress | None = None):
        unknown = [p for p in precisions if p not in LOW_PRECISIONS + (CPU_PRECISION,)]
        if unknown:
            raise SpecError(field="precisions", value=unknown[0], accepted=", ".join(LOW_PRECISIONS + ("fp32",)))
        if observer not in OBSERVERS:
            raise SpecError(field="observer", value=observer, accepted=", ".join(OBSERVERS))
        self.task, self.observer = task, observer
        self.precisions = (CPU_PRECISION,) + tuple(p for p in dict.fromkeys(precisions) if p != CPU_PRECISION)
        task.units.eval()
        self._variants: dict[str, list[nn.Module]] = {CPU_PRECISION: list(task.units)}
        for name, dtype in ROUNDED.items():
            if name in self.precisions:
                self._variants[name] = [_rounded_variant(u, dtype).eval() for u in task.units]
        self.calibration_seconds = 0.0
        if "int8" in self.precisions:
            self._build_int8(progress)

    def variant(self, unit: int, precision: str) -> nn.Module:
        if precision not in self._variants:
            raise SpecError(field="precision", value=precision, accepted=", ".join(self.precisions))
        return self._variants[precision][unit]

    def config(self) -> dict:
        """What the variants depend on besides the weights (part of a cached table's fingerprint)."""
        return {"precisions": list(self.precisions), "int8_observer": self.observer,
                "calibration_samples": len(self.task.calibration),
                "weights": f"per-channel symmetric qint8 [{WEIGHT_QMIN}, {WEIGHT_QMAX}]",
                "activations": "per-tensor affine quint8 at GEMM inputs and unit outputs"}

    @torch.no_grad()
    def _build_int8(self, progress: Progress | None) -> None:
        start = time.perf_counter()
        built = [_int8_variant(u, OBSERVERS[self.observer]) for u in self.task.units]
        variants = [v.eval() for v, _ in built]
        batches = self.task.calibration.batches
        for b, batch in enumerate(batches):
            self._observe(variants, batch, check=b < 2)
            if progress:
                progress("calibrating int8", b + 1, len(batches))
        for variant, quantizers in built:
            _freeze_int8(variant, quantizers)
        self._variants["int8"] = variants
        self.calibration_seconds = time.perf_counter() - start

    def _observe(self, variants: list[nn.Module], batch: Batch, check: bool) -> None:
        """Observing variants compute exactly fp32, so chaining them feeds each the fp32 activations. On the
        first batches, compare with the task's own units: a copy that missed `set_context` shows here."""
        self.task.set_context(batch)
        x = batch.x
        for i, variant in enumerate(variants):
            y = variant(x)
            if check:
                self.task.set_context(batch)
                expected = self.task.units[i](x)
                if not torch.allclose(y, expected, rtol=1e-4, atol=1e-5):
                    raise RuntimeError(f"{self.task.name}: copy of unit {self.task.unit_names[i]} computes "
                                       "differently from the unit; does it hold state `set_context` updates "
                                       "outside plain attributes?")
            x = y


# ---------------------------------------------------------------------------------------------- evaluator

def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors)


class _LRUBytes:
    """A dict bounded by the bytes of its values; the least recently used entries leave first."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = int(max_bytes), 0
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key):
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key, value, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        self._items[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self.bytes -= self._items.popitem(last=False)[1][1]


class Evaluator:
    """Accuracy of placements (one precision per unit), measured by running the emulated units.

    Activations after every evaluated prefix are kept per split (bounded by `cache_bytes`, LRU), so a
    placement sharing its first k precisions with an earlier one starts at unit k; final logits are kept
    per (precisions, split). `evaluations` counts full placements run (not cache hits), `units_run` counts
    units run over a whole split: how much measuring each policy needed.
    """

    def __init__(self, task: PrecisionTask, emulator: PrecisionEmulator, cache_bytes: int = int(1.5 * 2**30),
                 logits_cache_bytes: int = 256 * 2**20):
        self.task, self.emulator = task, emulator
        self._acts = _LRUBytes(cache_bytes)  # (split, prefix) -> per batch [n_b, ...]
        self._logits = _LRUBytes(logits_cache_bytes)  # (split, precisions) -> [N, classes]
        self._mutates: dict[tuple[int, str], bool] = {}  # (unit, precision) -> writes its input in place
        self.evaluations = 0
        self.units_run = 0

    def logits(self, precisions: tuple[str, ...], split: str = "validation") -> torch.Tensor:
        """[N, classes] logits of the placement over the split (do not modify: it is cached)."""
        precisions = self._check(precisions, full=True)
        key = (split, precisions)
        cached = self._logits.get(key)
        if cached is not None:
            return cached
        self.evaluations += 1
        out = torch.cat(self._forward(precisions, split))
        self._logits.put(key, out, _nbytes([out]))
        return out

    def correct(self, precisions: tuple[str, ...], split: str = "validation") -> torch.Tensor:
        """BoolTensor [N]: which inputs the placement classifies right."""
        return self.logits(precisions, split).argmax(1) == self.task.split(split).labels

    def accuracy(self, precisions: tuple[str, ...], split: str = "validation") -> float:
        return self.correct(precisions, split).float().mean().item()

    def activations(self, prefix: tuple[str, ...], split: str = "validation") -> list[torch.Tensor]:
        """Per batch, the activation after the first len(prefix) units in these precisions (do not modify)."""
        return self._forward(self._check(prefix, full=False), split)

    def _check(self, precisions, full: bool) -> tuple[str, ...]:
        precisions, n = tuple(precisions), self.task.num_units
        if len(precisions) > n or (full and len(precisions) != n):
            raise SpecError(field="precisions", value=len(precisions),
                            accepted=f"{n} precisions, one per unit" if full else f"at most {n} precisions")
        bad = [p for p in precisions if p not in self.emulator.precisions]
        if bad:
            raise SpecError(field="precisions", value=bad[0], accepted=", ".join(self.emulator.precisions))
        return precisions

    @torch.no_grad()
    def _forward(self, prefix: tuple[str, ...], split: str) -> list[torch.Tensor]:
        batches = self.task.split(split).batches
        start, xs = 0, [b.x for b in batches]
        for k in range(len(prefix), 0, -1):  # the longest cached prefix
            cached = self._acts.get((split, prefix[:k]))
            if cached is not None:
                start, xs = k, cached
                break
        for i in range(start, len(prefix)):
            unit = self.emulator.variant(i, prefix[i])
            xs = [self._run(i, prefix[i], unit, batch, x) for batch, x in zip(batches, xs)]
            self.units_run += 1
            self._acts.put((split, prefix[: i + 1]), xs, _nbytes(xs))
        return xs

    def _run(self, i: int, precision: str, unit: nn.Module, batch: Batch, x: torch.Tensor) -> torch.Tensor:
        """One unit on one batch. Cached inputs must survive: a unit found writing its input in place (checked
        on a copy the first time) gets a copy from then on."""
        self.task.set_context(batch)
        key = (i, precision)
        if self._mutates.get(key) is False:
            return unit(x)
        probe = x.clone()
        version = probe._version
        y = unit(probe)
        self._mutates[key] = probe._version != version
        return y
