"""`ExpertTable`: every LLM expert's answer distribution on every query, measured with a real model, and each
expert's simulated energy and latency per query on the edge server it is placed on.

The experts are variants of SmolLM2-135M-Instruct (real weights, `edgepool.llm.checkpoint`): a numeric format
(fp32; bf16; int8 by `torch.ao` dynamic quantization of every Linear), a prompt style (zero-shot, few-shot) and a
depth (all 30 decoder layers, or an early exit after fewer layers through the final norm and the LM head). One
forward pass per (format, prompt style) gives every depth at once from its hidden states. An expert answers a
query by the softmax of its logits over the query's choice tokens at the last prompt position.

Energy and latency are simulated: the FLOPs and weight bytes of the variant's prefill (its layers, the query's
real token count, its format) timed by the cost model's roofline on the server's catalog device in its power
mode, plus the query's trip from the gateway over the cluster's links; energy = busy power x compute time.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepool.errors import SpecError
from edgepool.scheduling.moe2.queries import PROMPT_STYLES, CategorySpec, Query, prompt
from edgepool.scheduling.scenarios import Progress

PRECISIONS = ("fp32", "bf16", "int8")
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0}
BATCH = 16
# torch.ao's dynamic int8 quantizes each Linear's input with one scale per tensor, so a query's answer would
# depend on what else (and how much padding) shares its batch: int8 experts read one query at a time.
BATCH_INT8 = 1
MEASURE_VERSION = 2  # part of the cache key: a change to how experts are scored invalidates old tables
TOKEN_BYTES = 4  # a token id on the wire (int32)


@dataclass(frozen=True)
class Variant:
    """One expert: a numeric format, a prompt style and how many decoder layers it runs."""

    precision: str
    style: str
    layers: int

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.style}-L{self.layers}"


@dataclass
class ExpertTable:
    """Measured answers and simulated costs, queries in order.

    probs[q, k, c]: expert k's probability of choice c on query q (0 past the query's own choices);
    tokens[q, k]: prompt tokens expert k reads for query q (real tokenizer counts)."""

    variants: list[Variant]
    categories: list[str]  # [Q]
    answers: np.ndarray  # [Q] int
    probs: np.ndarray  # [Q, K, C_max]
    tokens: np.ndarray  # [Q, K] int
    key: str  # hash of what was measured, to reuse a cached table only when it matches
    seconds: float  # wall time of the measurement
    source: str  # where the weights came from

    @property
    def correct(self) -> np.ndarray:
        """[Q, K] bool: the expert's top choice is the truth."""
        return self.probs.argmax(-1) == self.answers[:, None]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"variants": [asdict(v) for v in self.variants], "categories": self.categories, "key": self.key,
                "seconds": self.seconds, "source": self.source}
        np.savez_compressed(path, answers=self.answers, probs=self.probs, tokens=self.tokens,
                            meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: Path) -> "ExpertTable":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(variants=[Variant(**v) for v in meta["variants"]], categories=meta["categories"],
                       answers=z["answers"], probs=z["probs"], tokens=z["tokens"], key=meta["key"],
                       seconds=meta["seconds"], source=meta["source"])


def table_key(queries: list[Query], specs: dict[str, CategorySpec], variants: list[Variant]) -> str:
    blob = json.dumps([MEASURE_VERSION, [asdict(q) for q in queries], {k: asdict(v) for k, v in specs.items()},
                       [asdict(v) for v in variants]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_or_measured(path: Path, queries: list[Query], specs: dict[str, CategorySpec], variants: list[Variant],
                       progress: Progress | None = None, also: Path | None = None) -> tuple[ExpertTable, bool]:
    """The table at `path` (or at `also`, read only) when it was measured on exactly these queries and variants,
    else a fresh measurement saved at `path`. Returns (table, reused)."""
    key = table_key(queries, specs, variants)
    for candidate in (path, also):
        if candidate is None or not candidate.is_file():
            continue
        try:
            table = ExpertTable.load(candidate)
            if table.key == key:
                return table, True
        except (OSError, ValueError, KeyError):
            pass  # unreadable or from another version: measure again
    table = measure(queries, specs, variants, progress=progress)
    table.save(path)
    return table, False


# ----------------------------------------------------------------------------- measurement (real model)
def measure(queries: list[Query], specs: dict[str, CategorySpec], variants: list[Variant],
            progress: Progress | None = None, threads: int = 2) -> ExpertTable:
    """Score every query with every variant: one forward pass per (precision, style) over all queries on this CPU
    (batched, except int8: see BATCH_INT8), every depth read from its hidden states; `threads` while it runs."""
    import time

    from edgepool.local_device import torch_threads

    for v in variants:
        if v.precision not in PRECISIONS:
            raise SpecError("variant.precision", v.precision, ", ".join(PRECISIONS))
        if v.style not in PROMPT_STYLES:
            raise SpecError("variant.style", v.style, ", ".join(PROMPT_STYLES))
    start = time.perf_counter()
    with torch_threads(threads):
        return _measure(queries, specs, variants, progress, start)


def _measure(queries: list[Query], specs: dict[str, CategorySpec], variants: list[Variant],
             progress: Progress | None, start: float) -> ExpertTable:
    import time

    import torch

    from edgepool.llm.checkpoint import load_full_model, resolve_checkpoint

    checkpoint = resolve_checkpoint("smollm2", progress=False)
    tokenizer = _tokenizer(checkpoint.folder)
    base = load_full_model(checkpoint)
    n_layers = base.config.num_hidden_layers
    for v in variants:
        if not 1 <= v.layers <= n_layers:
            raise SpecError("variant.layers", v.layers, f"1..{n_layers} (SmolLM2-135M has {n_layers} layers)")
    c_max = max(len(q.choices) for q in queries)
    choice_ids = [_choice_ids(tokenizer, q, specs[q.category]) for q in queries]
    probs = np.zeros((len(queries), len(variants), c_max), dtype=np.float32)
    tokens = np.zeros((len(queries), len(variants)), dtype=np.int64)
    passes = sorted({(v.precision, v.style) for v in variants}, key=lambda p: (PRECISIONS.index(p[0]), p[1]))
    for i, (precision, style) in enumerate(passes):
        if progress:
            progress(f"experts: {precision} {style}", i, len(passes))
        model = _as_precision(base, precision)
        wanted = {v.layers: k for k, v in enumerate(variants) if (v.precision, v.style) == (precision, style)}
        texts = [prompt(q, specs[q.category], style) for q in queries]
        batch = BATCH_INT8 if precision == "int8" else BATCH
        lengths, hidden = _last_hidden(model, tokenizer, texts, sorted(wanted), batch)
        for layers, k in wanted.items():
            tokens[:, k] = lengths
            for start_q in range(0, len(queries), batch):
                rows = slice(start_q, start_q + batch)
                with torch.inference_mode():  # the variant's own LM head, [B, V]
                    logits = model.lm_head(hidden[layers][rows].to(_dtype(model))).float()
                for j, ids in enumerate(choice_ids[rows]):
                    probs[start_q + j, k, :len(ids)] = torch.softmax(logits[j, ids], -1).numpy()
    if progress:
        progress("experts", len(passes), len(passes))
    return ExpertTable(variants=list(variants), categories=[q.category for q in queries],
                       answers=np.array([q.answer for q in queries]), probs=probs, tokens=tokens,
                       key=table_key(queries, specs, variants), seconds=time.perf_counter() - start,
                       source=checkpoint.source)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # the last real position is gathered per row
    return tokenizer


def _choice_ids(tokenizer, query: Query, spec: CategorySpec) -> list[int]:
    """The one token each choice adds after the prompt; a choice that is not one token is bad input."""
    text = prompt(query, spec, "zero-shot")
    head = tokenizer(text)["input_ids"]
    ids = []
    for choice in query.choices:
        full = tokenizer(text + choice)["input_ids"]
        if len(full) != len(head) + 1 or full[: len(head)] != head:
            raise SpecError("query.choices", choice, "a choice that the tokenizer adds as exactly one token")
        ids.append(full[-1])
    return ids


def _dtype(model):
    import torch
    return torch.bfloat16 if next(model.parameters()).dtype == torch.bfloat16 else torch.float32


def _as_precision(base, precision: str):
    """The fp32 model itself, a bf16 copy, or a copy with every Linear dynamically quantized to int8."""
    import torch

    if precision == "fp32":
        return base
    if precision == "bf16":
        return copy.deepcopy(base).to(torch.bfloat16)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (it still works in this torch)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8)


def _last_hidden(model, tokenizer, texts: list[str], exits: list[int], batch: int = BATCH):
    """Real token counts [Q] and, per exit depth, the normed hidden state at each prompt's last token [Q, d]."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
    lengths = np.zeros(len(texts), dtype=np.int64)
    n_layers = model.config.num_hidden_layers
    out = {e: torch.zeros(len(texts), model.config.hidden_size) for e in exits}
    with torch.inference_mode():
        for b in range(0, len(order), batch):
            idx = order[b:b + batch]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True)
            last = enc["attention_mask"].sum(1) - 1  # [B]
            states = model.model(**enc, output_hidden_states=True).hidden_states  # n_layers+1 x [B, T, d]
            rows = torch.arange(len(idx))
            for e in exits:
                h = states[e][rows, last]  # [B, d]
                out[e][idx] = (h if e == n_layers else model.model.norm(h)).float()  # the last one is normed
            lengths[idx] = (last + 1).numpy()
    return lengths, out


# ----------------------------------------------------------------------------- simulated costs
@dataclass(frozen=True)
class ModelShape:
    """What the cost of a prefill depends on (SmolLM2-135M's config and parameter counts)."""

    layer_params: int
    hidden: int
    vocab: int

    @classmethod
    def smollm2_135m(cls) -> "ModelShape":
        # from the checkpoint's config: 30 layers of 3,540,096 parameters, d = 576, vocab 49,152 (tied embeddings)
        return cls(layer_params=3_540_096, hidden=576, vocab=49_152)


def prefill_work(variant: Variant, tokens: np.ndarray, shape: ModelShape) -> tuple[np.ndarray, float]:
    """FLOPs per query (2 per weight per token, attention scores and values, the LM head once) and weight bytes."""
    t = tokens.astype(float)
    flops = 2.0 * variant.layers * shape.layer_params * t + 4.0 * variant.layers * t * t * shape.hidden \
        + 2.0 * shape.hidden * shape.vocab
    weight_bytes = (variant.layers * shape.layer_params + shape.hidden * shape.vocab) * BYTES_PER_PARAM[
        variant.precision]
    return flops, weight_bytes


def simulated_costs(table: ExpertTable, fleet, placement: list[int], gateway: int,
                    shape: ModelShape | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Energy (J) and latency (s) per query and expert, [Q, K]: the expert's prefill on its server (roofline at
    the variant's precision and the server's power mode, `Fleet.compute_s`) plus the query's trip gateway -> server
    -> gateway (prompt token ids out, one small answer back)."""
    shape = shape or ModelShape.smollm2_135m()
    q, k = table.tokens.shape
    energy, latency = np.zeros((q, k)), np.zeros((q, k))
    for j, (variant, server) in enumerate(zip(table.variants, placement)):
        node = fleet.nodes[server]
        flops, weight_bytes = prefill_work(variant, table.tokens[:, j], shape)
        compute = np.array([fleet.compute_s(server, f, weight_bytes, variant.precision) for f in flops])
        trip = np.array([fleet.transfer_s(gateway, server, t * TOKEN_BYTES) + fleet.transfer_s(server, gateway, 64)
                         for t in table.tokens[:, j]])
        energy[:, j] = compute * node.power_busy_w
        latency[:, j] = compute + trip
    return energy, latency
