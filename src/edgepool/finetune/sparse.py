"""PockEngine-style sparse fine-tuning: only named units of the backbone train, plus the head.

A unit names a set of backbone parameters:

| unit              | parameters                                                        |
| ----------------- | ----------------------------------------------------------------- |
| `bias`            | every bias of every block (not the norms': those are `norm`)      |
| `norm`            | every LayerNorm/RMSNorm affine parameter (embedding and final too) |
| `lastK`           | the whole last K transformer blocks                                |
| `W-lastK`         | W in the last K blocks, W one of `bias`, `norm`, `ffn`, `attn-out`, `attn` (q/k/v) |

The backward graph is pruned by autograd itself, and `BackwardProbe` checks it: frozen parameters do not
require gradients, so nothing before the earliest block holding a trainable parameter records a graph or
saves a tensor (the token ids do not require gradients), and a Linear whose bias trains but whose weight is
frozen saves no input for the weight's gradient (PyTorch's addmm saves `input` only when the weight needs a
gradient; `test_finetune_sparse.py` checks this with saved-tensor hooks, so no custom autograd function is
needed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from edgepool.errors import SpecError
from edgepool.finetune.method import _ThroughBackbone, register_method

if TYPE_CHECKING:
    from edgepool.finetune.backbone import Backbone
    from edgepool.finetune.methods import FinetuneConfig, Finetuner

KINDS = ("bias", "norm", "ffn", "attn-out", "attn")
DEFAULT_CANDIDATES = ("bias", "norm", "last1", "last2", "ffn-last1", "attn-out-last1", "bias-last2",
                      "norm-last2")
UNITS_HELP = "bias, norm, lastK, or bias|norm|ffn|attn-out|attn followed by -lastK (K >= 1)"
_UNIT = re.compile(r"^(?:(bias|norm|ffn|attn-out|attn)(?:-last([1-9][0-9]*))?|last([1-9][0-9]*))$")

# parameter-name fragments inside a block, per role (BERT, Llama, GPT-2 naming)
_FFN = ("intermediate.dense", "mlp.")
_ATTN_OUT = ("attention.output.dense", "self_attn.o_proj", "attn.c_proj")
_ATTN = ("attention.self.", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "attn.c_attn")


@dataclass(frozen=True)
class Unit:
    """A parsed unit name: `kind` None means whole blocks; `last` None means every block."""
    name: str
    kind: str | None
    last: int | None


def parse_unit(name: str) -> Unit:
    m = _UNIT.match(name.strip())
    if not m:
        raise SpecError(field="sparse_updates", value=name, accepted=UNITS_HELP)
    kind, k, whole = m.groups()
    if whole:
        return Unit(name, None, int(whole))
    return Unit(name, kind, int(k) if k else None)


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks in order (BERT encoder.layer, Llama layers, GPT-2 h)."""
    for path in ("encoder.layer", "layers", "h"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise SpecError(field="model", value=type(model).__name__, accepted="a BERT, Llama or GPT-2 style backbone")


def _is_norm(module: nn.Module) -> bool:
    kind = type(module).__name__
    return isinstance(module, nn.LayerNorm) or "RMSNorm" in kind or "LayerNorm" in kind


def _role(name: str, module: nn.Module) -> str:
    """What a parameter is: norm, bias, ffn, attn-out, attn or other (its name is relative to its block)."""
    if _is_norm(module):
        return "norm"
    if name.endswith(".bias") or name == "bias":
        return "bias"
    if any(f in name for f in _ATTN_OUT):
        return "attn-out"
    if any(f in name for f in _ATTN):
        return "attn"
    if any(f in name for f in _FFN) or (name.startswith("output.dense") and "attention" not in name):
        return "ffn"
    return "other"


def unit_parameters(model: nn.Module, unit: Unit) -> dict[str, nn.Parameter]:
    """The backbone parameters a unit trains, by qualified name."""
    layers = blocks(model)
    if unit.last is not None and unit.last > len(layers):
        raise SpecError(field="sparse_updates", value=unit.name, accepted=f"lastK with K <= {len(layers)} blocks")
    chosen = set(range(len(layers) - (unit.last or len(layers)), len(layers)))
    where: dict[int, tuple[int, str]] = {}  # id(param) -> (block index, name inside the block)
    for i, block in enumerate(layers):
        for rel, p in block.named_parameters():
            where[id(p)] = (i, rel)
    out: dict[str, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            block, rel = where.get(id(p), (None, full))
            if unit.kind is None:
                ok = block in chosen
            elif unit.kind == "norm" and unit.last is None:
                ok = _is_norm(module)  # embedding and final norms too
            else:
                ok = block in chosen and _role(rel, module) == unit.kind
            if ok:
                out[full] = p
    return out


def selected_parameters(model: nn.Module, names: list[str]) -> dict[str, nn.Parameter]:
    out: dict[str, nn.Parameter] = {}
    for name in names:
        out.update(unit_parameters(model, parse_unit(name)))
    return out


def earliest_trainable_block(model: nn.Module) -> int | None:
    """The first block holding a parameter that requires grad (None: none does)."""
    for i, block in enumerate(blocks(model)):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return None


class BackwardProbe:
    """Records whether the input of a block requires grad: False proves no graph was built before it."""

    def __init__(self, model: nn.Module, index: int):
        self.input_requires_grad: bool | None = None
        self._handle = blocks(model)[index].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        self.input_requires_grad = bool(hidden.requires_grad)

    def remove(self) -> None:
        self._handle.remove()


@register_method
class Sparse(_ThroughBackbone):
    """Named units of the backbone (see the module docstring) and the head train; everything else is frozen.

    `config.sparse_updates` names the units. With `config.memory_budget_mb`, a contribution analysis
    (contribution.py) picks among them (or the default candidates) under the budget first (`plan`). With
    neither, the last block trains (what that analysis picks for MiniLM under 20% of full's memory)."""
    name = "sparse"
    default_lr = 1e-3  # the rate the MiniLM comparison (sparse_compare.py) trains its selection with
    DEFAULT_UPDATES = ("last1",)

    def __init__(self):
        self.selection = None

    def plan(self, tuner: Finetuner, config: FinetuneConfig) -> FinetuneConfig:
        from dataclasses import replace

        if config.memory_budget_mb is None:
            return config
        from edgepool.finetune.contribution import select_updates

        self.selection = select_updates(config, tuner.backbone, tuner.task)
        return replace(config, sparse_updates=self.selection.names, memory_budget_mb=None)

    def unfreeze(self, backbone: Backbone, config: FinetuneConfig) -> None:
        names = list(config.sparse_updates) if config.sparse_updates is not None else list(self.DEFAULT_UPDATES)
        for p in selected_parameters(backbone.model, names).values():
            p.requires_grad_(True)

    def report(self) -> dict | None:
        return self.selection.to_dict() if self.selection is not None else None
