"""Atomic file writes: a reader sees the old file or the whole new one, never half of it."""
from __future__ import annotations

from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to `path.tmp`, then rename over `path` (a rename is atomic on POSIX file systems)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
