"""The model a run trains and the data of each step: rebuilt identically in every process from a spec.

Every rank builds the full model with the same seed (so initial weights agree without a broadcast) and
draws step `i`'s global batch from a generator seeded by (seed, i), then keeps the rows it serves. Plain
single-process training (`reference.py`) uses the same two functions, which is what makes the correctness
test possible.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from edgepool.errors import SpecError
from edgepool.models.zoo import ModelBundle


@dataclass
class ModelSpec:
    """A zoo model by `name` (with config `overrides`), or a user `factory` "module:function" -> ModelBundle."""

    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "overrides": self.overrides, "factory": self.factory, "kwargs": self.kwargs,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)

    @property
    def label(self) -> str:
        return self.name or self.factory or "?"


def build_bundle(spec: ModelSpec) -> ModelBundle:
    if spec.factory:
        module_name, _, attr = spec.factory.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SpecError(field="model.factory", value=spec.factory,
                            accepted="an importable 'package.module:function' returning a ModelBundle") from exc
        torch.manual_seed(spec.seed)
        bundle = fn(**spec.kwargs)
    elif spec.name:
        from edgepool.models.zoo import build_model
        bundle = build_model(spec.name, meta=False, seed=spec.seed, **spec.overrides)
    else:
        raise SpecError(field="model", value=None, accepted="a zoo model name or a factory")
    bundle.blocks.train()
    return bundle


def step_batch(bundle: ModelBundle, batch: int, seq: int | None, seed: int, step: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the global batch of `step` (synthetic, deterministic)."""
    seed_value = seed * 1_000_003 + step
    torch.manual_seed(seed_value)  # custom inputs draw from the global generator
    generator = torch.Generator().manual_seed(seed_value)
    seq = seq or (bundle.default_seq if bundle.input_kind == "tokens" else None)
    inputs = bundle.example_input(batch, seq, generator=generator) if bundle.input_kind != "tensor" \
        else bundle.example_input(batch, seq)
    if bundle.kind == "custom":
        with torch.no_grad():
            targets = _custom_targets(bundle, inputs, generator)
    else:
        targets = bundle.example_target(batch, seq, inputs=inputs, generator=generator)
    return inputs, targets


def _custom_targets(bundle: ModelBundle, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Regression targets shaped like the model's output (custom bundles train with MSE)."""
    shape = bundle.config.get("output_shape")
    if shape is None:
        raise SpecError(field="bundle.config.output_shape", value=None,
                        accepted="the per-sample output shape of a custom model (set it in the factory)")
    return torch.randn(inputs.shape[0], *shape, generator=generator)


class NoParameters:
    """The optimizer of a stage that holds no parameters (only ReLU, pooling, reshapes): nothing to step.

    torch's optimizers refuse an empty parameter list, yet a planner may well give such layers a stage."""

    def __init__(self) -> None:
        self.state: dict = {}
        self.param_groups: list[dict] = []

    def step(self, closure=None) -> None:
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def state_dict(self) -> dict:
        return {"state": {}, "param_groups": []}

    def load_state_dict(self, state_dict: dict) -> None:
        return None


OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw")


def make_optimizer(params, name: str = "sgd", lr: float = 0.01) -> torch.optim.Optimizer | NoParameters:
    if name not in OPTIMIZERS:
        raise SpecError(field="optimizer", value=name, accepted=", ".join(OPTIMIZERS))
    params = list(params)
    if not params:
        return NoParameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, lr=lr)
