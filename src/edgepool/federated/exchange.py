"""`Exchange`: what a method sends each device, what comes back, and how the server combines it.

One interface, in the style of Flower's `Strategy`, one method per side of a round:
- server: `initial()` the global state; `download(state, node)` what that node receives; `aggregate(state,
  uploads)` the next global state; `evaluation_model(task, state)` the model the server tests;
- client: `client_model(task, arrays, node, store)` builds the model a node trains from what arrived (and
  returns the FedProx anchor), `upload(model, node)` what goes back. `store` is the node's own state across
  rounds (Flower's `Context.state`).
`WholeModel` is FedAvg's (every tensor, same shapes); `LoraExchange` carries LoRA factors of per-device ranks
and the classifier head, combined by one of `lora_aggregation`'s aggregators.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from edgepool.federated.lora_aggregation import weighted_average
from edgepool.federated.spec import NodeSpec

State = dict[str, torch.Tensor]
Upload = tuple[NodeSpec, State, float]  # (node, its tensors, its weight: examples trained)


def to_record(state: State):
    """A Flower ArrayRecord of detached, contiguous CPU tensors (what crosses the wire)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})


class Exchange(Protocol):
    def initial(self) -> State: ...

    def download(self, state: State, node: NodeSpec) -> State: ...

    def aggregate(self, state: State, uploads: list[Upload]) -> State: ...

    def evaluation_model(self, task, state: State) -> nn.Module: ...

    def client_model(self, task, arrays: State, node: NodeSpec, store) -> tuple[nn.Module, State]: ...

    def upload(self, model: nn.Module, node: NodeSpec) -> State: ...


class WholeModel:
    """Every weight of the model, to every device, averaged by examples (FedAvg, FedProx, FlocOff's servers)."""

    def __init__(self, task):
        self.task = task

    def initial(self) -> State:
        return {k: v.clone() for k, v in self.task.build(None).state_dict().items()}

    def download(self, state: State, node: NodeSpec) -> State:
        return state

    def aggregate(self, state: State, uploads: list[Upload]) -> State:
        return weighted_average([u[1] for u in uploads], [u[2] for u in uploads])

    def evaluation_model(self, task, state: State) -> nn.Module:
        model = task.build(None)
        model.load_state_dict(state)
        return model

    def client_model(self, task, arrays: State, node: NodeSpec, store) -> tuple[nn.Module, State]:
        model = task.build(node)
        model.load_state_dict(arrays)
        return model, {k: v.detach().clone() for k, v in arrays.items()}

    def upload(self, model: nn.Module, node: NodeSpec) -> State:
        return {k: v.detach() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- LoRA of per-device ranks
A_KEY, B_KEY, MERGED_KEY, HEAD_KEY = "lora.A.", "lora.B.", "merged.", "head."


def _factors(state: State) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k[len(A_KEY):]: (v, state[B_KEY + k[len(A_KEY):]]) for k, v in state.items() if k.startswith(A_KEY)}


def _flat(factors) -> State:
    out = {}
    for name, (a, b) in factors.items():
        out[A_KEY + name], out[B_KEY + name] = a, b
    return out


def _product(factors) -> State:
    return {name: b @ a for name, (a, b) in factors.items()}  # [out, r] @ [r, in] -> [out, in]


class LoraExchange:
    """LoRA factors (scaling folded into B, so ranks can differ) and the classifier head.

    `aggregator`: "fedavg" (homogeneous LoRA: every rank equal, factors averaged; zero-padding reduces to it),
    "zero-padding" (HetLoRA), "svd" (re-truncation, FlexLoRA) or "stacking" (FLoRA). With stacking the
    global is this round's stacked factors: each node merges their product into its own copy of the frozen
    base (kept in its Flower context across rounds) and trains a fresh LoRA; the server keeps the merged sum
    for its evaluation model. A node whose base is quantized gets the merge before quantization.
    """

    def __init__(self, task, aggregator: str):
        from edgepool.federated import lora_aggregation as agg

        self.task, self.name = task, aggregator
        self.aggregator = {"fedavg": agg.ZeroPadding, "zero-padding": agg.ZeroPadding,
                           "svd": agg.SvdRetruncation, "stacking": agg.Stacking}[aggregator]()

    def _scaling(self, node: NodeSpec) -> float:
        return self.task.spec.lora_scaling(node.rank)[1]

    # -- server
    def initial(self) -> State:
        head = self.task.build(None).head.state_dict()
        return {HEAD_KEY + k: v.clone() for k, v in head.items()}

    def download(self, state: State, node: NodeSpec) -> State:
        head = {k: v for k, v in state.items() if k.startswith(HEAD_KEY)}
        factors = _factors(state)
        if not factors:  # round 1: every node starts from peft's own initialisation
            return head
        from edgepool.federated.lora_aggregation import GlobalLoRA

        if self.name == "stacking":
            return {**head, **_flat(factors)}
        global_ = GlobalLoRA(factors, next(iter(factors.values()))[0].shape[0])
        mine, _ = self.aggregator.for_client(global_, node.rank)
        return {**head, **_flat(mine)}

    def aggregate(self, state: State, uploads: list[Upload]) -> State:
        from edgepool.federated.lora_aggregation import ClientUpdate

        heads = [{k: v for k, v in up.items() if k.startswith(HEAD_KEY)} for _, up, _ in uploads]
        updates = [ClientUpdate(_factors(up), weight, node.rank) for node, up, weight in uploads]
        new = {**weighted_average(heads, [u[2] for u in uploads]), **_flat(self.aggregator.aggregate(updates).factors)}
        if self.name == "stacking":
            merged = {k[len(MERGED_KEY):]: v for k, v in state.items() if k.startswith(MERGED_KEY)}
            for name, delta in _product(_factors(new)).items():
                merged[name] = merged[name] + delta if name in merged else delta
            new.update({MERGED_KEY + k: v for k, v in merged.items()})
        return new

    def evaluation_model(self, task, state: State) -> nn.Module:
        if self.name == "stacking":
            delta = {k[len(MERGED_KEY):]: v for k, v in state.items() if k.startswith(MERGED_KEY)}
        else:
            delta = _product(_factors(state))
        model = task.build(None, base_delta=delta)
        model.head.load_state_dict({k[len(HEAD_KEY):]: v for k, v in state.items() if k.startswith(HEAD_KEY)})
        return model

    # -- client
    def client_model(self, task, arrays: State, node: NodeSpec, store) -> tuple[nn.Module, State]:
        from edgepool.federated.lora_aggregation import factors_to_peft, unfold_scaling

        factors = _factors(arrays)
        if self.name == "stacking":
            merged = store["merged"].to_torch_state_dict() if "merged" in store else {}
            for name, delta in _product(factors).items():
                merged[name] = merged[name] + delta if name in merged else delta
            store["merged"] = to_record(merged)
            model = task.build(node, base_delta=merged)
        else:
            model = task.build(node)
            if factors:
                model.backbone.load_state_dict(factors_to_peft(unfold_scaling(factors, self._scaling(node))),
                                               strict=False)
        model.head.load_state_dict({k[len(HEAD_KEY):]: v for k, v in arrays.items() if k.startswith(HEAD_KEY)})
        return model, {}

    def upload(self, model: nn.Module, node: NodeSpec) -> State:
        from edgepool.federated.lora_aggregation import factors_from_peft, fold_scaling

        factors = fold_scaling(factors_from_peft(model.backbone.state_dict()), self._scaling(node))
        head = {HEAD_KEY + k: v.detach() for k, v in model.head.state_dict().items()}
        return {**head, **_flat(factors)}
