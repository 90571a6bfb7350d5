"""Weight-only quantization of a frozen base, for a device whose memory cannot hold it in float32.

The LoRA adapters stay float32 and train; only frozen nn.Linear weights (and the base_layer of peft LoRA layers)
are replaced by `QuantizedLinear`, which keeps int8 or packed int4 weights and multiplies through PyTorch's own
CPU kernels:

- int8: per-output-channel symmetric, w ~ q * scale, q in [-127, 127]; `aten._weight_int8pack_mm`.
- int4: per-group asymmetric (groups of `group_size` inputs), w ~ q * scale + min, q in [0, 15], packed by
  `aten._convert_weight_to_int4pack_for_cpu`, multiplied by `aten._weight_int4pack_mm_for_cpu` (which wants
  scales_and_zeros [in / group, out, 2] with zero = min + 8 * scale, its q - 8 convention). Needs
  out % 16 == 0 and in % group_size == 0; other layers stay float32 and are listed in the report.

Plain round-to-nearest, no calibration: int4 is lossy on outlier-heavy weights (MiniLM's FFN output matrices reach
~175 standard deviations), int8 much less so.

Both kernels run in bfloat16: in this torch their float32 (and float16) paths are scalar fallbacks, ~40x slower
than a float32 matmul on one core, while bfloat16 is vectorised. Activations are cast to bfloat16 for the product
and the result back to the input's dtype. Neither kernel has a derivative, so the product goes through an
autograd.Function whose backward is grad_x = grad_out @ W with W dequantized on the fly (no gradient for W):
LoRA layers after a quantized layer still receive their gradients.

Quantize after `peft.get_peft_model` (peft does not recognise QuantizedLinear as a target).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from edgepool.errors import SpecError

BITS = (8, 4)
GROUP_SIZES = (32, 64, 128, 256)  # what the int4 CPU kernel accepts
COMPUTE_DTYPE = torch.bfloat16  # see the module docstring


def _require_int4_kernels() -> None:
    ops = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")
    missing = [op for op in ops if not hasattr(torch.ops.aten, op)]
    if missing:
        raise SpecError(field="bits", value=4, accepted="8 (or None)",
                        hint=f"this torch {torch.__version__} lacks the CPU int4 kernels {', '.join(missing)}")


def int4_fits(linear: nn.Linear, group_size: int) -> bool:
    """Whether the int4 CPU kernel takes this layer's shape."""
    return linear.out_features % 16 == 0 and linear.in_features % group_size == 0


def _as_stored(t: Tensor) -> Tensor:
    """Scales and zeros rounded as they will be stored, so that q is rounded against the values the kernel uses."""
    return t.to(COMPUTE_DTYPE).float()


class _WeightOnlyMatmul(torch.autograd.Function):
    """x2d [n, in] -> x2d @ W.T [n, out] through the layer's kernel; grad_x = grad @ W, W not differentiated."""

    @staticmethod
    def forward(ctx, x2d: Tensor, layer: "QuantizedLinear") -> Tensor:
        ctx.layer = layer
        return layer.kernel_matmul(x2d)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad @ ctx.layer.dequantized_weight().to(grad.dtype), None  # [n, out] @ [out, in]


class QuantizedLinear(nn.Module):
    """A frozen nn.Linear with int8 (per-channel) or int4 (per-group) weights; y = x @ dequant(W).T + bias."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int = 128):
        super().__init__()
        if bits not in BITS:
            raise SpecError(field="bits", value=bits, accepted="8, 4 or None")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        w = linear.weight.detach().float()  # [out, in]
        if bits == 8:
            scale = _as_stored(w.abs().amax(1).clamp_min(1e-12) / 127)  # [out]
            q = torch.round(w / scale[:, None]).clamp(-127, 127)
            self.register_buffer("qweight", q.to(torch.int8))  # [out, in]
            self.register_buffer("scales", scale.to(COMPUTE_DTYPE))  # [out]
        else:
            _require_int4_kernels()
            if group_size not in GROUP_SIZES or not int4_fits(linear, group_size):
                raise SpecError(field="group_size", value=group_size,
                                accepted=f"one of {GROUP_SIZES} dividing in_features={self.in_features}, "
                                         f"with out_features={self.out_features} a multiple of 16")
            groups = w.reshape(self.out_features, -1, group_size)  # [out, in / g, g]
            low, high = groups.amin(-1), groups.amax(-1)  # [out, in / g]
            scale = _as_stored((high - low).clamp_min(1e-12) / 15)
            zero = _as_stored(low + 8 * scale)  # the kernel dequantizes (q - 8) * scale + zero
            q = torch.round((groups - (zero - 8 * scale)[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(self.out_features, -1), 1)
            self.register_buffer("qweight", packed)  # [out, in / 2] uint8
            scales = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()  # [in / g, out, 2]
            self.register_buffer("scales", scales.to(COMPUTE_DTYPE))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def kernel_matmul(self, x2d: Tensor) -> Tensor:
        """x2d [n, in] @ dequant(W).T -> [n, out] in x2d's dtype, computed in bfloat16 by the aten kernel."""
        xq = x2d.to(COMPUTE_DTYPE).contiguous()
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(xq, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xq, self.qweight, self.group_size, self.scales)
        return y.to(x2d.dtype)

    def dequantized_weight(self) -> Tensor:
        """W [out, in] in float32 as the kernel sees it. int4's packing is the kernel's own layout, so W.T is read
        back by multiplying the identity."""
        if self.bits == 8:
            return self.qweight.float() * self.scales.float()[:, None]
        eye = torch.eye(self.in_features, dtype=COMPUTE_DTYPE)
        return self.kernel_matmul(eye).float().T

    def weight_bytes(self) -> int:
        """Bytes of the stored weight and its scales (and zeros)."""
        return self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * self.scales.element_size()

    def forward(self, x: Tensor) -> Tensor:  # x [..., in] -> [..., out]
        y = _WeightOnlyMatmul.apply(x.reshape(-1, self.in_features), self).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"


@dataclass
class QuantReport:
    bits: int | None
    replaced: list[str] = field(default_factory=list)  # module paths now QuantizedLinear
    kept: dict[str, str] = field(default_factory=dict)  # frozen linears left in float32 -> why
    bytes_before: int = 0  # the replaced layers' original weights (biases excluded: they are kept as they were)
    bytes_after: int = 0  # their quantized weights with scales

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0


def _adapter_modules(model: nn.Module) -> set[int]:
    """ids of the modules inside peft adapters (lora_A, lora_B, ...): they train, even if frozen right now."""
    if "peft" not in sys.modules:  # no peft layers can exist; spares a model without them peft's slow import
        return set()
    from peft.tuners.tuners_utils import BaseTunerLayer

    ids = set()
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            for name in m.adapter_layer_names:
                holder = getattr(m, name, None)
                if isinstance(holder, nn.Module):
                    ids.update(id(x) for x in holder.modules())
    return ids


def quantize_frozen_linears(model: nn.Module, bits: int | None, group_size: int = 128) -> QuantReport:
    """Replace, in place, every frozen nn.Linear (all its parameters requires_grad False; for peft LoRA layers this
    is their base_layer) by a QuantizedLinear. bits None leaves the model as it is (memory suffices)."""
    if bits is not None and bits not in BITS:
        raise SpecError(field="bits", value=bits, accepted="8, 4 or None (no quantization)")
    report = QuantReport(bits)
    if bits is None:
        return report
    if bits == 4:
        _require_int4_kernels()
        if group_size not in GROUP_SIZES:
            raise SpecError(field="group_size", value=group_size, accepted=", ".join(map(str, GROUP_SIZES)))
    adapters = _adapter_modules(model)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and id(m) not in adapters
               and not any(p.requires_grad for p in m.parameters())]
    for name, linear in targets:
        if bits == 4 and not int4_fits(linear, group_size):
            report.kept[name] = (f"int4 needs out % 16 == 0 and in % {group_size} == 0, "
                                 f"got [out, in] = [{linear.out_features}, {linear.in_features}]")
            continue
        quantized = QuantizedLinear(linear, bits, group_size)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, quantized)
        report.replaced.append(name)
        report.bytes_before += linear.weight.numel() * linear.weight.element_size()
        report.bytes_after += quantized.weight_bytes()
    return report
