"""Atomic file writes: a reader sees the old file or the whole new one, never half of it."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to `path.tmp`, then rename over `path` (a rename is atomic on POSIX file systems)."""
    path = Path(path)
    if path.is_dir():  # checked first: the rename would fail only after a stray .tmp was written
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file path", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path next to `path` for a writer that wants a file name (matplotlib, torch.save):
    renamed over `path` when the block ends, removed if it raises. The file gets the mode a plain `open` would
    give (0666 less the umask), not `mkstemp`'s 0600, so it is as readable as every other output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
