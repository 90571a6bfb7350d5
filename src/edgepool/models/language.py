"""Hugging Face `transformers` language models as ordered partitionable blocks.

Each transformer layer becomes one block taking and returning hidden states; embeddings and the head are
blocks of their own. Blocks hold references to the model's own modules, so weights are shared, not copied.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedModel)


class HiddenStatesLayer(nn.Module):
    """A transformer layer seen as hidden -> hidden (no mask: causal layers mask themselves under SDPA)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden)


class RotaryLayer(nn.Module):
    """A Llama decoder layer with its rotary position embeddings computed from the sequence length."""

    def __init__(self, layer: nn.Module, rotary: nn.Module):
        super().__init__()
        self.layer = layer
        self.rotary = rotary

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        cos_sin = self.rotary(hidden, positions)
        return self.layer(hidden, position_ids=positions, position_embeddings=cos_sin)


class GPT2Embeddings(nn.Module):
    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding, drop: nn.Module):
        super().__init__()
        self.wte, self.wpe, self.drop = wte, wpe, drop

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(self.wte(input_ids) + self.wpe(positions))


class NormAndHead(nn.Module):
    def __init__(self, norm: nn.Module, head: nn.Module):
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))


class BertClassifierHead(nn.Module):
    def __init__(self, pooler: nn.Module, dropout: nn.Module, classifier: nn.Module):
        super().__init__()
        self.pooler, self.dropout, self.classifier = pooler, dropout, classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden)))


def _sdpa(config):
    config._attn_implementation = "sdpa"
    return config


def gpt2_blocks(model: GPT2LMHeadModel) -> nn.Sequential:
    t = model.transformer
    return nn.Sequential(GPT2Embeddings(t.wte, t.wpe, t.drop), *(HiddenStatesLayer(b) for b in t.h),
                         NormAndHead(t.ln_f, model.lm_head))


def llama_blocks(model: LlamaForCausalLM) -> nn.Sequential:
    m = model.model
    return nn.Sequential(m.embed_tokens, *(RotaryLayer(layer, m.rotary_emb) for layer in m.layers),
                         NormAndHead(m.norm, model.lm_head))


def bert_blocks(model: BertForSequenceClassification) -> nn.Sequential:
    b = model.bert
    return nn.Sequential(b.embeddings, *(HiddenStatesLayer(layer) for layer in b.encoder.layer),
                         BertClassifierHead(b.pooler, model.dropout, model.classifier))


def build_gpt2(**config) -> tuple[PreTrainedModel, nn.Sequential]:
    model = GPT2LMHeadModel(_sdpa(GPT2Config(**config)))
    return model, gpt2_blocks(model)


def build_llama(**config) -> tuple[PreTrainedModel, nn.Sequential]:
    model = LlamaForCausalLM(_sdpa(LlamaConfig(**config)))
    return model, llama_blocks(model)


def build_bert(**config) -> tuple[PreTrainedModel, nn.Sequential]:
    model = BertForSequenceClassification(_sdpa(BertConfig(**config)))
    return model, bert_blocks(model)
