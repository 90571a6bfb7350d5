"""The model zoo: every entry builds from a config (random weights), never from a download."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.models import vision


class _LazyLanguage:
    """`edgepool.models.language`, imported on first use: `transformers` costs ~5 s of CPU per process, and
    worker processes of vision or custom models never need it."""

    def __getattr__(self, name: str):
        import importlib

        return getattr(importlib.import_module("edgepool.models.language"), name)


language = _LazyLanguage()


@dataclass
class ModelBundle:
    """A model as ordered blocks plus how to make inputs and targets for it.

    `blocks` applied in order equal the model; a pipeline cuts between blocks. `kind` is vision, encoder,
    decoder or custom; `published_params` is the count the model's paper or card gives.
    """

    name: str
    kind: str
    blocks: nn.Sequential
    input_kind: str = "image"  # image | tokens | tensor
    image_size: int = 224
    vocab_size: int = 0
    num_classes: int = 1000
    default_seq: int = 128
    published_params: int | None = None
    hf_model: nn.Module | None = None
    config: dict = field(default_factory=dict)
    custom_input: Callable[[int], torch.Tensor] | None = None

    @property
    def is_meta(self) -> bool:
        return any(p.is_meta for p in self.blocks.parameters())

    def num_parameters(self) -> int:
        """Unique parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.blocks.parameters()}.values())

    def example_input(self, batch: int = 1, seq: int | None = None, device: str | torch.device = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
        if self.input_kind == "image":
            return torch.randn(batch, 3, self.image_size, self.image_size, device=device, generator=generator)
        if self.input_kind == "tokens":
            return torch.randint(0, self.vocab_size, (batch, seq or self.default_seq), device=device,
                                 generator=generator)
        return self.custom_input(batch).to(device)

    def example_target(self, batch: int = 1, seq: int | None = None, inputs: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels for `loss`: classes for classifiers, next tokens for decoders."""
        if self.kind == "decoder":
            tokens = inputs if inputs is not None else self.example_input(batch, seq, generator=generator)
            return torch.roll(tokens, -1, dims=1)
        return torch.randint(0, self.num_classes, (batch,), generator=generator)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "decoder":
            return nn.functional.cross_entropy(output.flatten(0, 1), target.flatten())
        if self.kind == "custom" and output.shape == target.shape:
            return nn.functional.mse_loss(output, target)
        return nn.functional.cross_entropy(output, target)


def _vision(name: str, net: nn.Module, params: int) -> ModelBundle:
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    image_size = getattr(net, "image_size", 224)
    return ModelBundle(name=name, kind="vision", blocks=net.blocks(), input_kind="image", image_size=image_size,
                       num_classes=head.out_features, published_params=params)


def _lm(name: str, kind: str, builder, params: int | None, seq: int, **config) -> ModelBundle:
    model, blocks = builder(**config)
    num_classes = config.get("num_labels", 2) if kind == "encoder" else config.get("vocab_size", 0)
    return ModelBundle(name=name, kind=kind, blocks=blocks, input_kind="tokens", vocab_size=config["vocab_size"],
                       num_classes=num_classes, default_seq=seq, published_params=params, hf_model=model,
                       config=config)


TINY_GPT2 = dict(vocab_size=512, n_positions=256, n_embd=64, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=1)
TINY_BERT = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                 max_position_embeddings=256, num_labels=2)
TINY_LLAMA = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)

# name -> (builder, published parameter count and its source)
_ZOO: dict[str, tuple[Callable[..., ModelBundle], str]] = {
    "mobilenet_v2": (lambda **k: _vision("mobilenet_v2", vision.MobileNetV2(**k), 3_504_872),
                     "3,504,872 parameters: torchvision MobileNet_V2_Weights.IMAGENET1K_V1"),
    "resnet18": (lambda **k: _vision("resnet18", vision.ResNet(vision.BasicBlock, [2, 2, 2, 2], **k), 11_689_512),
                 "11,689,512 parameters: torchvision ResNet18_Weights.IMAGENET1K_V1"),
    "resnet50": (lambda **k: _vision("resnet50", vision.ResNet(vision.Bottleneck, [3, 4, 6, 3], **k), 25_557_032),
                 "25,557,032 parameters, 4.1 GMACs: torchvision ResNet50_Weights.IMAGENET1K_V1; He et al. 2016"),
    "vgg16": (lambda **k: _vision("vgg16", vision.VGG16(**k), 138_357_544),
              "138,357,544 parameters: torchvision VGG16_Weights.IMAGENET1K_V1"),
    "vit_b_16": (lambda **k: _vision("vit_b_16", vision.ViT(**k), 86_567_656),
                 "86,567,656 parameters: torchvision ViT_B_16_Weights.IMAGENET1K_V1"),
    "bert-base": (lambda **k: _lm("bert-base", "encoder", language.build_bert, 109_483_778, 128,
                                  **{**dict(vocab_size=30522, num_labels=2), **k}),
                  "109,482,240 (BertModel) + 1,538 classifier: bert-base-uncased model card / Devlin et al. 2019"),
    "gpt2": (lambda **k: _lm("gpt2", "decoder", language.build_gpt2, 124_439_808, 128,
                             **{**dict(vocab_size=50257), **k}),
             "124,439,808 parameters (tied head): openai-community/gpt2 model card"),
    "tinyllama-1.1b": (lambda **k: _lm("tinyllama-1.1b", "decoder", language.build_llama, 1_100_048_384, 512,
                                       **{**dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                                 max_position_embeddings=2048, tie_word_embeddings=False), **k}),
                       "1,100,048,384 parameters: TinyLlama/TinyLlama-1.1B config (22 layers, 2048 hidden, GQA 4)"),
    "llama-2-7b": (lambda **k: _lm("llama-2-7b", "decoder", language.build_llama, 6_738_415_616, 512,
                                   **{**dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                             max_position_embeddings=4096, tie_word_embeddings=False), **k}),
                   "6,738,415,616 parameters: meta-llama/Llama-2-7b-hf config, Touvron et al. 2023"),
    "gpt2-tiny": (lambda **k: _lm("gpt2-tiny", "decoder", language.build_gpt2, None, 32, **{**TINY_GPT2, **k}),
                  "test config"),
    "bert-tiny": (lambda **k: _lm("bert-tiny", "encoder", language.build_bert, None, 32, **{**TINY_BERT, **k}),
                  "test config"),
    "llama-tiny": (lambda **k: _lm("llama-tiny", "decoder", language.build_llama, None, 32, **{**TINY_LLAMA, **k}),
                   "test config"),
}

# Built on PyTorch's meta device by default: too large to materialize on an edge box (profiling and planning).
META_BY_DEFAULT = {"tinyllama-1.1b", "llama-2-7b"}


def model_names() -> list[str]:
    return list(_ZOO)


def model_source(name: str) -> str:
    return _ZOO[name][1]


def build_model(name: str, meta: bool | None = None, seed: int = 0, **overrides) -> ModelBundle:
    """Build a zoo model from its config; `meta=True` allocates no memory (profiling and planning only)."""
    if name not in _ZOO:
        raise SpecError(field="model", value=name, accepted=", ".join(model_names()))
    meta = name in META_BY_DEFAULT if meta is None else meta
    torch.manual_seed(seed)
    if meta:
        with torch.device("meta"):
            bundle = _ZOO[name][0](**overrides)
    else:
        bundle = _ZOO[name][0](**overrides)
    bundle.blocks.eval()
    return bundle


def bundle_from_module(module: nn.Module | Sequence[nn.Module], example_input: torch.Tensor, name: str = "custom",
                       target_shape: tuple[int, ...] | None = None, split_children: bool = False) -> ModelBundle:
    """A user's own model as blocks a pipeline can cut between, trained with MSE against random targets.

    `module` is an `nn.Sequential` (cut between its children), a list of blocks applied in order, or any other
    module. Another module is one block, which no planner can split across devices (a warning says so), unless
    `split_children=True`: then its top-level children are the blocks, accepted only when applying them in order
    gives the module's own output on `example_input` (its forward is a chain of them). `example_input` has a
    batch dimension; the output shape (for the training targets) is measured by running it once.
    `target_shape`, when given, must equal that per-sample output shape.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise SpecError(field="example_input", value=type(example_input).__name__,
                        accepted="a tensor whose first dimension is the batch, e.g. torch.zeros(1, 16)")
    blocks = _blocks_of(module, example_input, split_children)
    output_shape = list(_output_of(blocks, example_input).shape[1:])
    if target_shape is not None and list(target_shape) != output_shape:
        raise SpecError(field="target_shape", value=tuple(target_shape),
                        accepted=f"the per-sample output shape of the model, {tuple(output_shape)} (targets are "
                                 "regression targets of that shape; leave target_shape out to use it)")
    per_sample = example_input[:1]
    return ModelBundle(name=name, kind="custom", blocks=blocks, input_kind="tensor",
                       config={"output_shape": output_shape},
                       custom_input=lambda b: per_sample.expand(b, *per_sample.shape[1:]).clone().normal_())


def _blocks_of(module, example_input: torch.Tensor, split_children: bool) -> nn.Sequential:
    if isinstance(module, nn.Sequential):
        return module
    if isinstance(module, (list, tuple, nn.ModuleList)):
        for i, block in enumerate(module):
            if not isinstance(block, nn.Module):
                raise SpecError(field=f"module[{i}]", value=type(block).__name__, accepted="an nn.Module")
        if not len(module):
            raise SpecError(field="module", value=[], accepted="at least one block")
        return nn.Sequential(*module)
    if not isinstance(module, nn.Module):
        raise SpecError(field="module", value=type(module).__name__,
                        accepted="an nn.Sequential, a list of nn.Module blocks, or an nn.Module")
    kind = type(module).__name__
    if not split_children:
        warnings.warn(f"{kind} is not an nn.Sequential, so it is one block and every plan keeps it whole on one "
                      "device (data parallel only); to pipeline it pass a list of blocks, or split_children=True "
                      "when its forward applies its top-level children in order", stacklevel=3)
        return nn.Sequential(module)
    children = nn.Sequential(*module.children())
    reason = _chain_mismatch(module, children, example_input)
    if reason:
        raise SpecError(field="split_children", value=True, accepted=f"a module whose forward applies its "
                        f"top-level children in order; {kind}'s does not ({reason})",
                        hint="pass the blocks as a list instead")
    return children


def _chain_mismatch(module: nn.Module, children: nn.Sequential, x: torch.Tensor) -> str | None:
    """Why the children applied in order are not the module (None when they are), compared in eval mode."""
    if not len(children):
        return "it has no children"
    inputs = [x]
    if x.is_floating_point():  # a random input too: zeros can hide a function applied between children
        inputs.append(torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0)))
    with _evaluating(module), torch.no_grad():
        for sample in inputs:
            want = module(sample)
            try:
                got = children(sample)
            except Exception as exc:  # noqa: BLE001 - any failure means: not a chain
                return f"applying the children in order fails: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            if not isinstance(want, torch.Tensor) or want.shape != got.shape or not torch.allclose(want, got):
                return "applying the children in order gives another output"
    return None


def _output_of(blocks: nn.Sequential, example_input: torch.Tensor) -> torch.Tensor:
    """One pass of the example through the blocks (on the meta device when the model is there)."""
    x = example_input[:1]
    if any(p.is_meta for p in blocks.parameters()):
        x = x.to("meta")
    with _evaluating(blocks), torch.no_grad():
        for i, block in enumerate(blocks):
            try:
                x = block(x)
            except Exception as exc:  # noqa: BLE001 - the user's model; name the block that failed
                raise SpecError(field=f"blocks[{i}]", value=type(block).__name__,
                                accepted="blocks that apply in order to example_input",
                                hint=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
            if not isinstance(x, torch.Tensor):
                raise SpecError(field=f"blocks[{i}]", value=type(block).__name__,
                                accepted="blocks that each return one tensor (the next block's input)")
    return x


@contextlib.contextmanager
def _evaluating(module: nn.Module):
    """Eval mode for a look at the model (no dropout, batch norm statistics untouched), then the modes it had."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
