"""`ModelProfile`: a model as ordered layers (blocks) with FLOPs, bytes and, where asked, measured times.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2); the bytes a block
saves for backward come from autograd's saved-tensor hooks (parameters excluded). Both work on the `meta`
device, so models that do not fit here are profiled without allocating them.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgepool.errors import SpecError
from edgepool.models.zoo import ModelBundle


def context_length(bundle: ModelBundle) -> int | None:
    """The most tokens a language model's position table holds; None for models without one."""
    config = getattr(bundle.hf_model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None) or bundle.config.get(key)
        if value:
            return int(value)
    return None


def check_seq(bundle: ModelBundle, seq: int | None, field: str = "seq") -> None:
    """Refuse a sequence longer than the model's context where plans are made and run, not deep in a worker."""
    limit = context_length(bundle) if bundle.input_kind == "tokens" else None
    tokens = seq or bundle.default_seq
    if limit is not None and tokens > limit:
        raise SpecError(field=field, value=tokens, accepted=f"1 to {limit} tokens (the context length of "
                        f"{bundle.name}: its position table has {limit} entries)")


@dataclass
class LayerProfile:
    name: str
    fwd_flops: float
    bwd_flops: float
    param_bytes: int
    output_bytes: int  # activation sent to the next block, for the profiled batch
    saved_bytes: int  # activations kept for backward, for the profiled batch
    input_bytes: int = 0
    fwd_time_s: float | None = None  # measured on this machine, for the profiled batch
    bwd_time_s: float | None = None


@dataclass
class SharedParameters:
    """Parameters several blocks use (GPT-2's embedding and head): their gradient is summed over every device
    holding one of those blocks. `param_bytes` of the first block counts them; the others count 0."""
    blocks: tuple[int, ...]
    param_bytes: int


@dataclass
class ModelProfile:
    model: str
    batch: int
    seq: int | None
    layers: list[LayerProfile]
    dtype_bytes: int = 4
    measured_on: str | None = None
    notes: dict = field(default_factory=dict)
    shared: list[SharedParameters] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def total_fwd_flops(self) -> float:
        return sum(l.fwd_flops for l in self.layers)

    @property
    def total_bwd_flops(self) -> float:
        return sum(l.bwd_flops for l in self.layers)

    @property
    def total_param_bytes(self) -> int:
        return sum(l.param_bytes for l in self.layers)

    def slice_sum(self, attr: str, start: int, end: int) -> float:
        return sum(getattr(l, attr) or 0 for l in self.layers[start:end])

    def to_dict(self) -> dict:
        return {
            "model": self.model, "batch": self.batch, "seq": self.seq, "dtype_bytes": self.dtype_bytes,
            "measured_on": self.measured_on, "notes": self.notes,
            "shared": [asdict(g) for g in self.shared],
            "total_fwd_flops": self.total_fwd_flops, "total_bwd_flops": self.total_bwd_flops,
            "total_param_bytes": self.total_param_bytes,
            "layers": [asdict(l) for l in self.layers],
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelProfile":
        return cls(model=d["model"], batch=d["batch"], seq=d.get("seq"), dtype_bytes=d.get("dtype_bytes", 4),
                   measured_on=d.get("measured_on"), notes=d.get("notes", {}),
                   shared=[SharedParameters(tuple(g["blocks"]), g["param_bytes"]) for g in d.get("shared", [])],
                   layers=[LayerProfile(**l) for l in d["layers"]])


def parameter_blocks(blocks: nn.Sequential) -> dict[str, set[int]]:
    """Canonical parameter name -> indices of the blocks that use it (tied weights appear in several)."""
    name_of = {id(p): name for name, p in blocks.named_parameters()}
    used: dict[str, set[int]] = {name: set() for name in name_of.values()}
    for index, block in enumerate(blocks):
        for p in block.parameters():
            used[name_of[id(p)]].add(index)
    return used


def shared_parameters(blocks: nn.Sequential) -> list[SharedParameters]:
    """Bytes of the parameters used by more than one block, grouped by the blocks that use them."""
    sizes = {name: p.numel() * p.element_size() for name, p in blocks.named_parameters()}
    groups: dict[tuple[int, ...], int] = {}
    for name, used in parameter_blocks(blocks).items():
        if len(used) > 1:
            key = tuple(sorted(used))
            groups[key] = groups.get(key, 0) + sizes[name]
    return [SharedParameters(blocks, nbytes) for blocks, nbytes in sorted(groups.items())]


def _unique_param_bytes(module: nn.Module, seen: set[int]) -> int:
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


class _SavedBytes:
    """Counts bytes autograd saves for backward, excluding parameters and counting each tensor once."""

    def __init__(self, params: set[int]):
        self.params, self.seen, self.total = params, set(), 0

    def pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(t) not in self.params and id(base) not in self.params and id(base) not in self.seen:
            self.seen.add(id(base))
            self.total += base.numel() * base.element_size()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _timed(fn, repeats: int) -> float:
    """Best of `repeats`: other processes only ever add time, so the minimum is the least disturbed run."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def profile_model(bundle: ModelBundle, batch: int = 1, seq: int | None = None, measure: bool = False,
                  repeats: int = 3) -> ModelProfile:
    """Profile each block with the previous block's real output as input, in training mode."""
    if measure and bundle.is_meta:
        raise ValueError(f"model {bundle.name!r} is on the meta device; it can be profiled but not measured "
                         "(build it with meta=False to measure)")
    device = "meta" if bundle.is_meta else "cpu"
    seq = seq or (bundle.default_seq if bundle.input_kind == "tokens" else None)
    check_seq(bundle, seq)
    x = bundle.example_input(batch, seq, device=device)
    seen_params: set[int] = set()
    layers: list[LayerProfile] = []
    was_training = bundle.blocks.training
    bundle.blocks.train()
    for index, block in enumerate(bundle.blocks):
        params = {id(p) for p in block.parameters()}
        inp = x.detach().requires_grad_(x.is_floating_point())
        with FlopCounterMode(display=False) as fwd_counter, _SavedBytes(params) as saved:
            out = block(inp)
        with FlopCounterMode(display=False) as bwd_counter:
            if out.requires_grad:
                out.backward(torch.ones_like(out))
        layer = LayerProfile(
            name=f"{index}:{type(block).__name__}",
            fwd_flops=float(fwd_counter.get_total_flops()),
            bwd_flops=float(bwd_counter.get_total_flops()),
            param_bytes=_unique_param_bytes(block, seen_params),
            output_bytes=out.numel() * out.element_size(),
            saved_bytes=saved.total,
            input_bytes=inp.numel() * inp.element_size(),
        )
        if measure:
            def forward():
                with torch.no_grad():
                    block(inp)

            def forward_backward():
                o = block(inp)
                if o.requires_grad:
                    o.backward(torch.ones_like(o))

            forward()
            layer.fwd_time_s = _timed(forward, repeats)
            layer.bwd_time_s = max(_timed(forward_backward, repeats) - layer.fwd_time_s, 0.0)
        block.zero_grad(set_to_none=True)
        layers.append(layer)
        x = out.detach()
    bundle.blocks.train(was_training)
    measured_on = None
    if measure:
        import platform
        measured_on = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} torch threads)"
    return ModelProfile(model=bundle.name, batch=batch, seq=seq, layers=layers, measured_on=measured_on,
                        shared=shared_parameters(bundle.blocks))
