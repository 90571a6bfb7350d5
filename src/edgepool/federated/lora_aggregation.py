"""Aggregating LoRA adapters of different ranks from federated clients (FedPipe, arXiv 2404.06448, and the
methods it is compared with).

A client of rank r holds, per adapted module, A [r, in] and B [out, r]. peft computes delta W = B @ A * scaling
with scaling = lora_alpha / r, so clients of different ranks scale their factors differently. Everything here
works on *folded* factors, whose product is the update itself: a client folds its scaling into B before
uploading (`fold_scaling`) and unfolds its own scaling from what it downloads (`unfold_scaling`) before loading
it into peft. Averaging raw peft factors of different ranks would mix different scales.

Three aggregators, one interface (`aggregate` once per round, `for_client` once per client):

- ZeroPadding (HetLoRA, Cho et al. 2024): pad to the largest rank, average, truncate per client. HetLoRA's
  sparsity-weighted aggregation and rank self-pruning are not included: this is its padding baseline.
- Stacking (FLoRA, Wang et al. 2024): concatenate the factors, which sums the products exactly; clients merge
  the sum into their frozen base and start a fresh LoRA of their own rank.
- SvdRetruncation (FlexLoRA, Bai et al. 2024): form the exact weighted sum and give each client its best
  rank-r approximation (truncated SVD), with the relative error of that truncation.

Bytes are float32 (4 per value): an upload costs `factor_bytes(update.factors)`, a download
`aggregator.download_bytes(global_, rank)`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from edgepool.errors import SpecError

Factors = dict[str, tuple[Tensor, Tensor]]  # module name -> (A [r, in], B [out, r]); delta W = B @ A
BYTES_PER_VALUE = 4  # float32 on the wire
PEFT_PREFIX = "base_model.model."


@dataclass
class ClientUpdate:
    factors: Factors  # folded: B already multiplied by the client's scaling
    weight: float  # the client's share before normalisation, e.g. its number of examples
    rank: int


@dataclass
class GlobalLoRA:
    factors: Factors  # zero-padding: rank max r_i; stacking and SVD: the exact weighted sum at rank sum r_i
    rank: int


class Aggregator(Protocol):
    def aggregate(self, updates: list[ClientUpdate]) -> GlobalLoRA: ...

    def for_client(self, global_: GlobalLoRA, rank: int) -> tuple[Factors, object]: ...

    def download_bytes(self, global_: GlobalLoRA, rank: int) -> int: ...


def fold_scaling(factors: Factors, scaling: float) -> Factors:
    """peft factors -> folded factors (B * scaling), whose product is the update whatever the rank."""
    return {name: (a, b * scaling) for name, (a, b) in factors.items()}


def unfold_scaling(factors: Factors, scaling: float) -> Factors:
    """Folded factors -> peft factors for a client whose scaling is lora_alpha / r."""
    return {name: (a, b / scaling) for name, (a, b) in factors.items()}


def factor_bytes(factors: Factors) -> int:
    return sum((a.numel() + b.numel()) * BYTES_PER_VALUE for a, b in factors.values())


def _normalised(weights: list[float]) -> list[float]:
    if not weights or any(not (math.isfinite(w) and w > 0) for w in weights):
        raise SpecError(field="weights", value=weights, accepted="one finite positive weight per client")
    total = sum(weights)
    return [w / total for w in weights]


def _check_rank(rank: int) -> None:
    if not isinstance(rank, int) or rank <= 0:
        raise SpecError(field="rank", value=rank, accepted="a positive integer")


def _checked(updates: list[ClientUpdate]) -> list[float]:
    """Validate a round's updates (same modules, consistent shapes and ranks); return normalised weights."""
    if not updates:
        raise SpecError(field="updates", value=updates, accepted="at least one ClientUpdate")
    names = set(updates[0].factors)
    if not names:
        raise SpecError(field="factors", value={}, accepted="at least one adapted module")
    for i, u in enumerate(updates):
        _check_rank(u.rank)
        if set(u.factors) != names:
            raise SpecError(field=f"updates[{i}].factors", value=sorted(set(u.factors) ^ names),
                            accepted="the same module names from every client")
        for name, (a, b) in u.factors.items():
            a0, b0 = updates[0].factors[name]
            if a.dim() != 2 or b.dim() != 2 or a.shape != (u.rank, a0.shape[1]) or b.shape != (b0.shape[0], u.rank):
                raise SpecError(field=f"updates[{i}].factors[{name!r}]", value=(tuple(a.shape), tuple(b.shape)),
                                accepted=f"A [{u.rank}, {a0.shape[1]}] and B [{b0.shape[0]}, {u.rank}] (rank {u.rank})")
    return _normalised([u.weight for u in updates])


def _resize(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncate or zero-pad to `rank`: the first rows of A [r, in] and the first columns of B [out, r]."""
    keep = min(rank, a.shape[0])
    a2, b2 = a.new_zeros(rank, a.shape[1]), b.new_zeros(b.shape[0], rank)
    a2[:keep], b2[:, :keep] = a[:keep], b[:, :keep]
    return a2, b2


def _relative_error(full: Tensor, approx: Tensor) -> float:
    norm = torch.linalg.matrix_norm(full).item()
    return torch.linalg.matrix_norm(full - approx).item() / norm if norm > 0 else 0.0


def _lora_bytes(global_: GlobalLoRA, rank: int) -> int:
    return sum(rank * (a.shape[1] + b.shape[0]) * BYTES_PER_VALUE for a, b in global_.factors.values())


def _stack(updates: list[ClientUpdate]) -> GlobalLoRA:
    """The exact weighted sum: B_stack @ A_stack = sum_i w_i B_i @ A_i."""
    weights = _checked(updates)
    factors = {name: (torch.cat([u.factors[name][0] for u in updates], 0),  # [sum r_i, in]
                      torch.cat([w * u.factors[name][1] for w, u in zip(weights, updates)], 1))  # [out, sum r_i]
               for name in updates[0].factors}
    return GlobalLoRA(factors, sum(u.rank for u in updates))


class ZeroPadding:
    """HetLoRA's padding: average factors padded to the largest rank; a client downloads the leading r ranks."""

    def aggregate(self, updates: list[ClientUpdate]) -> GlobalLoRA:
        weights = _checked(updates)
        r_max = max(u.rank for u in updates)
        factors = {}
        for name in updates[0].factors:
            padded = [_resize(*u.factors[name], r_max) for u in updates]
            factors[name] = (sum(w * a for w, (a, _) in zip(weights, padded)),  # [r_max, in]
                             sum(w * b for w, (_, b) in zip(weights, padded)))  # [out, r_max]
        return GlobalLoRA(factors, r_max)

    def for_client(self, global_: GlobalLoRA, rank: int) -> tuple[Factors, dict[str, float]]:
        """The truncated factors and, per module, ||B A - B_r A_r|| / ||B A|| against the global product."""
        _check_rank(rank)
        out, errors = {}, {}
        for name, (a, b) in global_.factors.items():
            out[name] = _resize(a, b, rank)
            errors[name] = _relative_error(b @ a, out[name][1] @ out[name][0])
        return out, errors

    def download_bytes(self, global_: GlobalLoRA, rank: int) -> int:
        return _lora_bytes(global_, rank)


@dataclass
class Stacking:
    """FLoRA: the global is the stacked factors (exact sum). A client merges it into its frozen base with
    `merge_into_base` and trains a fresh LoRA of its own rank, initialised like peft's (A kaiming-uniform from
    `seed`, B zero), so every client starts the next round from the same point."""
    seed: int = 0

    def aggregate(self, updates: list[ClientUpdate]) -> GlobalLoRA:
        return _stack(updates)

    def for_client(self, global_: GlobalLoRA, rank: int) -> tuple[Factors, Factors]:
        """(the stacked factors to merge, a fresh LoRA of `rank`)."""
        _check_rank(rank)
        generator = torch.Generator().manual_seed(self.seed)
        fresh = {}
        for name, (a, b) in global_.factors.items():
            a_new = torch.empty(rank, a.shape[1], dtype=a.dtype)
            torch.nn.init.kaiming_uniform_(a_new, a=math.sqrt(5), generator=generator)  # as peft's lora_A
            fresh[name] = (a_new, b.new_zeros(b.shape[0], rank))
        return global_.factors, fresh

    def download_bytes(self, global_: GlobalLoRA, rank: int) -> int:
        return _lora_bytes(global_, global_.rank)  # the fresh LoRA is drawn locally from the shared seed


def merge_into_base(weight: Tensor, a_stack: Tensor, b_stack: Tensor) -> Tensor:
    """The base weight [out, in] plus the stacked update B_stack [out, R] @ A_stack [R, in] (a new tensor)."""
    if a_stack.shape[0] != b_stack.shape[1] or weight.shape != (b_stack.shape[0], a_stack.shape[1]):
        raise SpecError(field="a_stack, b_stack", value=(tuple(a_stack.shape), tuple(b_stack.shape)),
                        accepted=f"A [R, {weight.shape[1]}] and B [{weight.shape[0]}, R] for a weight [out, in] "
                                 f"= {list(weight.shape)}")
    return weight + b_stack @ a_stack


class SvdRetruncation:
    """FlexLoRA: the global is the exact weighted sum (kept as stacked factors, rank sum r_i); a client of rank r
    gets the best rank-r approximation of delta W as B = U_r S_r, A = Vh_r. A keeps orthonormal rows, the scale
    of a fresh LoRA's A (kaiming-uniform rows have norm about 0.6): split evenly (sqrt(S) on both sides) both
    factors of a small update are small, B's gradient is proportional to A, and training stalled (measured:
    two rounds at chance on the tweets)."""

    def aggregate(self, updates: list[ClientUpdate]) -> GlobalLoRA:
        return _stack(updates)

    def for_client(self, global_: GlobalLoRA, rank: int) -> tuple[Factors, dict[str, float]]:
        """The rank-r factors (zero-padded when rank > min(out, in)) and, per module, the relative Frobenius error
        ||dW - B A|| / ||dW|| = sqrt(sum_{k>r} S_k^2 / sum_k S_k^2)."""
        _check_rank(rank)
        out, errors = {}, {}
        for name, (a, b) in global_.factors.items():
            u, s, vh = torch.linalg.svd(b @ a, full_matrices=False)  # [out, k], [k], [k, in]; k = min(out, in)
            out[name] = _resize(vh[:rank], u[:, :rank] * s[:rank], rank)
            total = s.square().sum()
            errors[name] = (s[rank:].square().sum() / total).sqrt().item() if total > 0 else 0.0
        return out, errors

    def download_bytes(self, global_: GlobalLoRA, rank: int) -> int:
        return _lora_bytes(global_, rank)


def weighted_average(states: list[dict[str, Tensor]], weights: list[float]) -> dict[str, Tensor]:
    """FedAvg of same-shaped tensors (homogeneous LoRA, full fine-tuning, the classifier head)."""
    if not states:
        raise SpecError(field="states", value=states, accepted="at least one state dict")
    if len(weights) != len(states):
        raise SpecError(field="weights", value=weights, accepted=f"one weight per state ({len(states)})")
    shares = _normalised(weights)
    first = states[0]
    for i, state in enumerate(states):
        if state.keys() != first.keys():
            raise SpecError(field=f"states[{i}]", value=sorted(set(state) ^ set(first)),
                            accepted="the same keys in every state")
        for key, t in state.items():
            if t.shape != first[key].shape:
                raise SpecError(field=f"states[{i}][{key!r}]", value=tuple(t.shape),
                                accepted=f"shape {tuple(first[key].shape)} as in states[0]")
    return {key: sum(w * s[key] for w, s in zip(shares, states)) for key in first}


def factors_from_peft(state_dict: dict[str, Tensor], adapter: str = "default") -> Factors:
    """peft's (unfolded) factors from a PeftModel's state_dict(), keyed by module path inside the base model:
    'base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight'
    -> 'encoder.layer.0.attention.self.query'. Other keys (the base weights) are ignored."""
    pattern = re.compile(rf"^(?:{re.escape(PEFT_PREFIX)})?(.+)\.lora_A\.{re.escape(adapter)}\.weight$")
    factors = {}
    for key, a in state_dict.items():
        match = pattern.match(key)
        if match:
            b_key = key.replace(f".lora_A.{adapter}.", f".lora_B.{adapter}.")
            if b_key not in state_dict:
                raise SpecError(field="state_dict", value=b_key, accepted="a lora_B weight for every lora_A weight")
            factors[match.group(1)] = (a.detach(), state_dict[b_key].detach())
    if not factors:
        raise SpecError(field="adapter", value=adapter,
                        accepted="an adapter with lora_A/lora_B weights in the state dict")
    return factors


def factors_to_peft(factors: Factors, adapter: str = "default") -> dict[str, Tensor]:
    """The inverse of `factors_from_peft`: load with `peft_model.load_state_dict(..., strict=False)`."""
    state = {}
    for name, (a, b) in factors.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.{adapter}.weight"] = a
        state[f"{PEFT_PREFIX}{name}.lora_B.{adapter}.weight"] = b
    return state
