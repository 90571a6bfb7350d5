"""Activation cache: the frozen backbone's hidden states per sample, filled once, read every later epoch.

Entries live in memory while they fit `memory_budget_bytes`, then in one append-only file read back through
a numpy memory map while they fit `disk_budget_bytes`; an entry that fits neither is not stored and the
caller recomputes it with the backbone (counted in `stats().overflow_puts`), so nothing is dropped.

A directory cache is reusable across runs: `seal()` writes `manifest.json` (atomically, last) holding the
fingerprint of model weights + tokenizer + data + layout, every entry's offset and a checksum of the data
file. `open` rebuilds the cache (and says why in `rebuilt_reason`) when the manifest is missing, names
another fingerprint, or the data file's size or checksum disagree with it; it never serves such entries.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgepool.atomic import write_text_atomic

FORMAT_VERSION = 1
DATA_FILE = "entries.bin"
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_NP = {"float32": np.float32, "float16": np.float16}


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps({k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}).encode())
    h.update(str(getattr(tokenizer, "do_lower_case", "")).encode())
    return h.hexdigest()


def cache_fingerprint(model: torch.nn.Module, tokenizer, data_fingerprint: str, dtype: str, num_states: int) -> str:
    """One string naming everything a cached state depends on."""
    parts = [f"v{FORMAT_VERSION}", weights_fingerprint(model), tokenizer_fingerprint(tokenizer),
             data_fingerprint, dtype, str(num_states)]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


@dataclass
class CacheStats:
    entries_memory: int
    entries_disk: int
    bytes_memory: int
    bytes_disk: int
    hits: int
    misses: int
    overflow_puts: int
    memory_budget_bytes: int
    disk_budget_bytes: int
    reused_entries: int
    rebuilt_reason: str | None
    directory: str | None

    @property
    def bytes_total(self) -> int:
        return self.bytes_memory + self.bytes_disk

    def to_dict(self) -> dict:
        return asdict(self) | {"bytes_total": self.bytes_total}


class ActivationCache:
    """Maps an integer sample key to a tensor [num_states, seq, hidden] stored at `dtype`."""

    def __init__(self, fingerprint: str, memory_budget_bytes: int, disk_budget_bytes: int = 0,
                 directory: str | Path | None = None, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype {dtype!r}; accepted: {', '.join(DTYPES)}")
        self.fingerprint, self.dtype = fingerprint, dtype
        self.memory_budget, self.disk_budget = int(memory_budget_bytes), int(disk_budget_bytes)
        self._memory: dict[int, torch.Tensor] = {}
        self._disk: dict[int, tuple[int, list[int]]] = {}  # key -> (element offset, shape)
        self._bytes_memory = self._bytes_disk = 0
        self.hits = self.misses = self.overflow_puts = self.reused_entries = 0
        self.rebuilt_reason: str | None = None
        self._tmp = None
        self._writer = None
        self._map: np.memmap | None = None
        if directory is None and self.disk_budget > 0:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgepool-cache-")
            directory = self._tmp.name
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open_directory()

    # ------------------------------------------------------------------ persistence
    def _open_directory(self) -> None:
        manifest_path = self.directory / MANIFEST
        data_path = self.directory / DATA_FILE
        reason = None
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("fingerprint") != self.fingerprint or manifest.get("dtype") != self.dtype:
                    reason = "fingerprint mismatch (other model, tokenizer, data or layout)"
                elif not data_path.exists() or data_path.stat().st_size != manifest["data_bytes"]:
                    reason = "data file size differs from the manifest (truncated or overwritten)"
                elif _hash_file(data_path) != manifest["checksum"]:
                    reason = "data file checksum differs from the manifest (corrupted)"
                else:
                    self._disk = {int(k): (v[0], v[1]) for k, v in manifest["entries"].items()}
                    self._bytes_disk = manifest["data_bytes"]
                    self.reused_entries = len(self._disk)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                reason = f"unreadable manifest ({exc})"
        elif data_path.exists():
            reason = "data file without a manifest (an earlier run did not finish)"
        if reason is not None:
            self.rebuilt_reason = reason
        if reason is not None or not manifest_path.exists():
            for name in (MANIFEST, DATA_FILE):
                (self.directory / name).unlink(missing_ok=True)
            self._disk, self._bytes_disk = {}, 0

    def seal(self) -> None:
        """Flush the data file and write the manifest last (atomically), so a half-written cache never
        looks complete."""
        if self.directory is None:
            return
        self._close_writer()
        data_path = self.directory / DATA_FILE
        if not data_path.exists():
            data_path.touch()
        manifest = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "dtype": self.dtype,
                    "data_bytes": data_path.stat().st_size, "checksum": _hash_file(data_path),
                    "entries": {str(k): [off, shape] for k, (off, shape) in self._disk.items()}}
        write_text_atomic(self.directory / MANIFEST, json.dumps(manifest))

    def _invalidate_manifest(self) -> None:
        (self.directory / MANIFEST).unlink(missing_ok=True)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._close_writer()
        self._map = None
        self._memory.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------ entries
    def __contains__(self, key: int) -> bool:
        return key in self._memory or key in self._disk

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)

    def get(self, key: int) -> torch.Tensor | None:
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        if key in self._disk:
            self.hits += 1
            offset, shape = self._disk[key]
            count = int(np.prod(shape))
            itemsize = np.dtype(_NP[self.dtype]).itemsize
            if self._map is None or (offset + count) * itemsize > self._map.nbytes:
                self._close_writer()
                self._map = np.memmap(self.directory / DATA_FILE, dtype=_NP[self.dtype], mode="r")
            return torch.from_numpy(np.array(self._map[offset: offset + count]).reshape(shape))
        self.misses += 1
        return None

    def put(self, key: int, states: torch.Tensor) -> str:
        """Store one sample's states; returns where it went: "memory", "disk" or "overflow" (not stored)."""
        if key in self:
            return "memory" if key in self._memory else "disk"
        t = states.detach().to(DTYPES[self.dtype]).contiguous()
        nbytes = t.numel() * t.element_size()
        if self._bytes_memory + nbytes <= self.memory_budget:
            self._memory[key] = t.clone()
            self._bytes_memory += nbytes
            return "memory"
        if self.directory is not None and self._bytes_disk + nbytes <= self.disk_budget:
            if self._writer is None:
                self._invalidate_manifest()
                self._writer = open(self.directory / DATA_FILE, "ab")
            offset = self._bytes_disk // t.element_size()
            self._writer.write(t.numpy().tobytes())
            self._disk[key] = (offset, list(t.shape))
            self._bytes_disk += nbytes
            return "disk"
        self.overflow_puts += 1
        return "overflow"

    def stats(self) -> CacheStats:
        return CacheStats(entries_memory=len(self._memory), entries_disk=len(self._disk),
                          bytes_memory=self._bytes_memory, bytes_disk=self._bytes_disk, hits=self.hits,
                          misses=self.misses, overflow_puts=self.overflow_puts,
                          memory_budget_bytes=self.memory_budget, disk_budget_bytes=self.disk_budget,
                          reused_entries=self.reused_entries, rebuilt_reason=self.rebuilt_reason,
                          directory=str(self.directory) if self.directory and not self._tmp else None)

