"""One pipeline stage of a Llama checkpoint: the embeddings (first stage), decoder layers `[a, b)`, and the
final norm and LM head (last stage).

A stage reads only its own tensors from the checkpoint's safetensors files (the model is built on the `meta`
device first, so no process ever holds the whole model), and its layers are transformers' own
`LlamaDecoderLayer`s with the engine's paged attention (`edgepool.serving.engine.paged_attention`): the
same code path as the one-process engine, cut at layer boundaries.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from edgepool.serving.engine import ATTENTION_NAME, PagedBatch


class StageModel(nn.Module):
    """Layers `layers` of the model, plus the embeddings when `first` and norm + head when `last`."""

    def __init__(self, config: LlamaConfig, layers: range, first: bool, last: bool):
        super().__init__()
        self.config, self.layer_range, self.first, self.last = config, layers, first, last
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size) if first else None
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, layer_idx=i) for i in layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if last else None
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if last else None

    @classmethod
    def load(cls, folder: str | Path, layers: range, first: bool, last: bool,
             dtype: torch.dtype = torch.float32) -> "StageModel":
        config = copy.deepcopy(AutoConfig.from_pretrained(folder, local_files_only=True))
        config._attn_implementation = ATTENTION_NAME
        with torch.device("meta"):
            stage = cls(config, layers, first, last)
        stage.load_state_dict(_stage_tensors(Path(folder), config, layers, first, last, dtype), assign=True)
        stage.rotary = LlamaRotaryEmbedding(config)  # computed, not stored: built on the CPU, not meta
        return stage.eval()

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, positions: torch.Tensor, paged: PagedBatch) -> torch.Tensor:
        """(1, T) token ids on the first stage, else (1, T, hidden) -> (1, T, hidden) after this stage's layers."""
        hidden = self.embed(inputs) if self.first else inputs
        cos_sin = self.rotary(hidden, positions)
        for layer in self.layers:
            hidden = layer(hidden, position_ids=positions, position_embeddings=cos_sin, paged=paged)
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """(len(rows), vocab) float logits of the chosen token rows (each request's last token)."""
        return self.head(self.norm(hidden[0, rows])).float()


def _stage_tensors(folder: Path, config: LlamaConfig, layers: range, first: bool, last: bool,
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """This stage's tensors, renamed to the stage's modules, read lazily from every safetensors file."""
    wanted: dict[str, str] = {}
    if first:
        wanted["model.embed_tokens.weight"] = "embed.weight"
    for j, i in enumerate(layers):
        wanted[f"model.layers.{i}."] = f"layers.{j}."
    if last:
        wanted["model.norm.weight"] = "norm.weight"
        wanted["lm_head.weight"] = "head.weight"
    state: dict[str, torch.Tensor] = {}
    embeddings = None
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if last and name == "model.embed_tokens.weight":
                    embeddings = f.get_tensor(name).to(dtype)
                for prefix, target in wanted.items():
                    if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                        state[target + name[len(prefix):] if prefix.endswith(".") else target] = f.get_tensor(name).to(dtype)
    if last and "head.weight" not in state:
        if not getattr(config, "tie_word_embeddings", False) or embeddings is None:
            raise ValueError(f"{folder}: no lm_head.weight and no tied embeddings to use instead")
        state["head.weight"] = embeddings  # tied: the head is the embedding matrix
    if first and "embed.weight" in state and last and state["head.weight"] is not state["embed.weight"] \
            and getattr(config, "tie_word_embeddings", False):
        state["head.weight"] = state["embed.weight"]
    return state
