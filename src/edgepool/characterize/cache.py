"""The page cache state of the data set's files: dropped, so a run reads them from the storage device itself,
or warmed, so a run never pays for a cold read another run (or a drop) left behind.

As root with a writable /proc/sys/vm/drop_caches the whole clean page cache is dropped (what a cold start
sees); otherwise each file is evicted with posix_fadvise(DONTNEED), which works for any user on clean pages.
The method used is returned so the measurement can say which it was.
"""
from __future__ import annotations

import os
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache(files: list[Path]) -> str:
    """Evict `files` from the page cache; returns a sentence naming the method used."""
    os.sync()  # dirty pages cannot be dropped: write them back first
    if os.geteuid() == 0:
        try:
            DROP_CACHES.write_text("1")
            return "page cache dropped: echo 1 > /proc/sys/vm/drop_caches (whole host, as root)"
        except OSError:
            pass  # read-only /proc/sys in a container: fall back to per-file advice
    evicted = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            evicted += 1
        finally:
            os.close(fd)
    return f"page cache dropped: posix_fadvise(DONTNEED) on each of {evicted} files"


def warm_page_cache(files: list[Path]) -> str:
    """Read every file once so all of them sit in the page cache; returns a sentence saying so."""
    total = 0
    for path in files:
        with open(path, "rb") as f:
            total += len(f.read())
    return f"page cache warmed: all {len(files)} files ({total / 1e6:.1f} MB) read once before the run"
