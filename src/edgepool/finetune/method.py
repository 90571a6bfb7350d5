"""What differs between fine-tuning methods: a `FinetuneMethod`, one method per phase, registered by name.

Every method runs in the same loop (`methods.Finetuner`: data, batches, optimizer, epochs, evaluation); it
decides only

- `prepare(backbone, num_labels, config) -> TrainableParts`: what it adds to the frozen backbone (parallel
  adapters, or a head with LoRA or the whole backbone unfrozen) and which parameters the optimizer updates;
- `logits(tuner, split, indices)`: the forward pass of a training step and of evaluation, i.e. where the
  backbone's states come from (a live forward with autograd, a no-grad forward, or the activation cache);
- `before_training(tuner)`: the modules' mode for training (dropout off: results are deterministic);
- `caches_states` and `default_lr`: whether the run keeps an activation cache, and the learning rate used
  when the config names none.

To add a method: subclass `FinetuneMethod`, set `name` and `default_lr`, implement the phases and decorate
the class with `@register_method`; `FinetuneConfig(method=name)` then selects it. `finetune_method(name)` is
the one place a name becomes a method (an unknown name is a `SpecError` that lists the registered ones).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.finetune.adapters import ClassifierHead, ParallelAdapters
from edgepool.finetune.data import EncodedSplit, pad_batch

if TYPE_CHECKING:
    from edgepool.finetune.backbone import Backbone
    from edgepool.finetune.methods import FinetuneConfig, Finetuner


@dataclass
class TrainableParts:
    """What a method adds to the backbone (a side network, or a head) and what the optimizer updates."""
    adapters: ParallelAdapters | None
    head: ClassifierHead | None
    trainable: list[nn.Parameter]


class FinetuneMethod(ABC):
    """One fine-tuning method; see the module docstring for its phases."""
    name: ClassVar[str]
    default_lr: ClassVar[float]
    caches_states: ClassVar[bool] = False

    @abstractmethod
    def prepare(self, backbone: Backbone, num_labels: int, config: FinetuneConfig) -> TrainableParts:
        """Build this method's modules on `backbone` (which it may wrap or unfreeze); return what trains."""

    @abstractmethod
    def logits(self, tuner: Finetuner, split: EncodedSplit, indices: list[int]) -> torch.Tensor:
        """Logits [len(indices), labels] for these samples of `split`."""

    def before_training(self, tuner: Finetuner) -> None:
        """Set the modules' mode for training; the backbone stays in eval mode (frozen) by default."""

    def plan(self, tuner: Finetuner, config: FinetuneConfig) -> FinetuneConfig:
        """Before `prepare`, with the backbone and task loaded: settle choices that need them (sparse: what
        trains under a memory budget). Returns the config the run uses; unchanged by default."""
        return config

    def report(self) -> dict | None:
        """What the method chose, for the run's report (JSON-ready); None by default."""
        return None


_REGISTRY: dict[str, type[FinetuneMethod]] = {}


def register_method(cls: type[FinetuneMethod]) -> type[FinetuneMethod]:
    """Class decorator: make `cls` selectable as `FinetuneConfig(method=cls.name)`."""
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(_REGISTRY)


def finetune_method(name: str) -> FinetuneMethod:
    """The registered method called `name`; a `SpecError` listing the registered names otherwise."""
    if name not in _REGISTRY:
        raise SpecError(field="method", value=name, accepted=", ".join(_REGISTRY))
    return _REGISTRY[name]()


class _SideNetwork(FinetuneMethod):
    """Parallel adapters read the frozen backbone's states: backward never enters the backbone."""

    def prepare(self, backbone: Backbone, num_labels: int, config: FinetuneConfig) -> TrainableParts:
        adapters = ParallelAdapters(backbone.hidden_size, backbone.num_states, num_labels, config.bottleneck)
        return TrainableParts(adapters, None, list(adapters.parameters()))

    def logits(self, tuner: Finetuner, split: EncodedSplit, indices: list[int]) -> torch.Tensor:
        return tuner.adapters(*tuner.states(split, indices))


@register_method
class PAC(_SideNetwork):
    """Parallel adapters + activation cache: the backbone runs once per sample, later epochs read the cache."""
    name = "pac"
    default_lr = 3e-3
    caches_states = True


class _ThroughBackbone(FinetuneMethod):
    """A head on the backbone's last state; the gradient flows back through the backbone."""

    def prepare(self, backbone: Backbone, num_labels: int, config: FinetuneConfig) -> TrainableParts:
        head = ClassifierHead(backbone.hidden_size, num_labels)
        self.unfreeze(backbone, config)
        trainable = [p for p in backbone.model.parameters() if p.requires_grad] + list(head.parameters())
        return TrainableParts(None, head, trainable)

    @abstractmethod
    def unfreeze(self, backbone: Backbone, config: FinetuneConfig) -> None:
        """Make what trains in the backbone require gradients (after the head is built: same random draws)."""

    def logits(self, tuner: Finetuner, split: EncodedSplit, indices: list[int]) -> torch.Tensor:
        ids, mask = pad_batch([split.input_ids[i] for i in indices], tuner.task.pad_id)
        return tuner.head(tuner.backbone.last_hidden(ids, mask), mask)

    def before_training(self, tuner: Finetuner) -> None:
        tuner.backbone.model.train(False)  # dropout off: see the module docstring


@register_method
class LoRA(_ThroughBackbone):
    """LoRA matrices (peft) on the frozen backbone, plus the head: forward and backward through the backbone."""
    name = "lora"
    default_lr = 1e-3

    def unfreeze(self, backbone: Backbone, config: FinetuneConfig) -> None:
        from peft import LoraConfig, get_peft_model

        conv1d = backbone.model.config.model_type == "gpt2"  # GPT-2 stores (in, out) weights
        lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                          fan_in_fan_out=conv1d)
        backbone.model = get_peft_model(backbone.model, lora)


@register_method
class FullFinetune(_ThroughBackbone):
    """Every backbone weight and the head train."""
    name = "full"
    default_lr = 5e-5

    def unfreeze(self, backbone: Backbone, config: FinetuneConfig) -> None:
        backbone.model.requires_grad_(True)


@register_method
class Adapters(_SideNetwork):
    """Parallel adapters without the cache: a no-grad backbone forward every step (PAC's ablation)."""
    name = "adapters"
    default_lr = 3e-3

