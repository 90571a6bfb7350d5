"""`BlockManager`: fixed-size KV-cache blocks on the device and in a bounded host pool, per request.

It only keeps the books (which block belongs to whom); the executor moves the data. Every operation
that moves data returns the (source, destination) block pairs to copy.
"""
from __future__ import annotations

from dataclasses import dataclass


class OutOfBlocks(RuntimeError):
    """Asked for more blocks than are free; the scheduler checks first, so this is a bug if it escapes."""


@dataclass(frozen=True)
class BlockUsage:
    device_used: int
    device_total: int
    host_used: int
    host_total: int


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, num_host_blocks: int = 0):
        if num_blocks <= 0 or block_size <= 0 or num_host_blocks < 0:
            raise ValueError(f"num_blocks={num_blocks}, block_size={block_size}, num_host_blocks={num_host_blocks}: "
                             "need num_blocks > 0, block_size > 0, num_host_blocks >= 0")
        self.num_blocks, self.block_size, self.num_host_blocks = num_blocks, block_size, num_host_blocks
        # Pop from the end: low block ids are handed out first, which keeps tests readable.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._host_free = list(range(num_host_blocks - 1, -1, -1))
        self.tables: dict[str, list[int]] = {}
        self.host_tables: dict[str, list[int]] = {}

    # --- queries -------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_host_free(self) -> int:
        return len(self._host_free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def table(self, request_id: str) -> list[int]:
        return self.tables.get(request_id, [])

    def num_blocks_of(self, request_id: str) -> int:
        return len(self.tables.get(request_id, ()))

    def usage(self) -> BlockUsage:
        return BlockUsage(self.num_used, self.num_blocks, self.num_host_blocks - self.num_host_free,
                          self.num_host_blocks)

    # --- device blocks -------------------------------------------------------------------------
    def allocate(self, request_id: str, count: int) -> list[int]:
        if count > len(self._free):
            raise OutOfBlocks(f"{request_id}: asked for {count} blocks, {len(self._free)} free")
        new = [self._free.pop() for _ in range(count)]
        self.tables.setdefault(request_id, []).extend(new)
        return new

    def grow_to(self, request_id: str, tokens: int) -> list[int]:
        """Make the request's table hold at least `tokens` tokens."""
        missing = self.blocks_for(tokens) - self.num_blocks_of(request_id)
        return self.allocate(request_id, missing) if missing > 0 else []

    def shrink_to(self, request_id: str, tokens: int) -> int:
        """Give back blocks beyond what `tokens` tokens need (unused reservation); returns how many."""
        table = self.tables.get(request_id, [])
        keep = max(self.blocks_for(tokens), 0)
        released = table[keep:]
        del table[keep:]
        self._free.extend(reversed(released))
        return len(released)

    def free(self, request_id: str) -> int:
        table = self.tables.pop(request_id, [])
        self._free.extend(reversed(table))
        host = self.host_tables.pop(request_id, [])
        self._host_free.extend(reversed(host))
        return len(table) + len(host)

    # --- host pool -----------------------------------------------------------------------------
    def can_swap_out(self, request_id: str, tokens: int) -> bool:
        return self.blocks_for(tokens) <= len(self._host_free)

    def swap_out(self, request_id: str, tokens: int) -> list[tuple[int, int]]:
        """Move the blocks holding `tokens` tokens to the host; the rest of the reservation is released."""
        self.shrink_to(request_id, tokens)
        table = self.tables.pop(request_id, [])
        if len(table) > len(self._host_free):
            self.tables[request_id] = table
            raise OutOfBlocks(f"{request_id}: {len(table)} blocks to swap out, {len(self._host_free)} host blocks free")
        host = [self._host_free.pop() for _ in table]
        self.host_tables[request_id] = host
        self._free.extend(reversed(table))
        return list(zip(table, host))

    def swap_in(self, request_id: str) -> list[tuple[int, int]]:
        host = self.host_tables.get(request_id, [])
        if len(host) > len(self._free):
            raise OutOfBlocks(f"{request_id}: {len(host)} blocks to swap in, {len(self._free)} free")
        self.host_tables.pop(request_id)
        device = self.allocate(request_id, len(host)) if host else []
        self._host_free.extend(reversed(host))
        return list(zip(host, device))

    def check(self, live_request_ids: set[str] | None = None) -> None:
        """Raise if any block is lost or shared: used blocks must equal the sum over tables."""
        in_tables = [b for t in self.tables.values() for b in t]
        in_host = [b for t in self.host_tables.values() for b in t]
        problems = []
        if len(in_tables) != self.num_used:
            problems.append(f"device: {self.num_used} used but tables hold {len(in_tables)}")
        if len(set(in_tables)) != len(in_tables) or set(in_tables) & set(self._free):
            problems.append("device: a block is in two tables or both used and free")
        if len(in_host) != self.num_host_blocks - len(self._host_free):
            problems.append(f"host: {self.num_host_blocks - len(self._host_free)} used but tables hold {len(in_host)}")
        if len(set(in_host)) != len(in_host) or set(in_host) & set(self._host_free):
            problems.append("host: a block is in two tables or both used and free")
        if live_request_ids is not None:
            owners = set(self.tables) | set(self.host_tables)
            if owners - live_request_ids:
                problems.append(f"blocks held by finished/unknown requests: {sorted(owners - live_request_ids)}")
        if problems:
            raise AssertionError("; ".join(problems))
