"""Uneven, tiled all-gather and reduce-scatter over point-to-point messages, for gloo.

Why by hand: gloo has no reduce-scatter at all and its all-gather wants equal sizes, while Galaxy's hybrid
parallelism gives each device a different number of sequence rows. Padding to the largest share would send
bytes for nothing, so each collective here is a set of `isend`/`irecv` messages: every device sends the rows it
owns (all-gather) or the partial sums of rows another device owns (reduce-scatter) straight to that device.
This is an all-to-all pattern, not a ring: every pair of devices exchanges its part directly, which on a
switched network (and on the testbed, which shapes each pair's bandwidth) runs the n-1 transfers of a device
at once. All messages are asynchronous (`async_op`-style work objects), so the caller computes on the tiles
that have arrived while later tiles are still on the wire: that is the tile-based overlap.

Tags: every message carries a tag derived from a per-communicator counter, and all ranks issue collectives in
the same order, so tags match without negotiation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgepool.shares import split_counts

TAG_SPACE = 1 << 20


def offsets(counts: list[int]) -> list[int]:
    out, acc = [], 0
    for c in counts:
        out.append(acc)
        acc += c
    return out


@dataclass(frozen=True)
class SequenceLayout:
    """Which sequence rows each member owns (contiguous, in member order) and how they are cut into tiles.

    Tile k of member m is the k-th of `tiles` near-equal pieces of m's rows; tile k of the collective is the
    k-th piece of every member, so each tile moves a slice of every device's rows at once.
    """

    counts: tuple[int, ...]
    tiles: int = 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def start(self, member: int) -> int:
        return sum(self.counts[:member])

    def tile(self, member: int, k: int) -> tuple[int, int]:
        """Global [start, end) rows of member's tile k (may be empty)."""
        pieces = split_counts(self.counts[member], [1.0] * self.tiles)
        lo = self.start(member) + sum(pieces[:k])
        return lo, lo + pieces[k]

    def local_tile(self, member: int, k: int) -> tuple[int, int]:
        lo, hi = self.tile(member, k)
        base = self.start(member)
        return lo - base, hi - base


class Communicator:
    """The members (global ranks) of one tensor-parallel group and this process's place in it."""

    def __init__(self, ranks: list[int], group=None):
        self.ranks = list(ranks)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.me = self.ranks.index(self.rank)
        self.group = group  # a torch.distributed group for the library collectives (all_reduce)
        self._tag = 0

    @property
    def size(self) -> int:
        return len(self.ranks)

    def next_tag(self) -> int:
        self._tag = (self._tag + 1) % TAG_SPACE
        return self._tag

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over members with gloo's own all-reduce (what Megatron-style tensor parallelism uses)."""
        if self.size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    # ------------------------------------------------------------------ point to point
    def isend(self, tensor: torch.Tensor, member: int, tag: int):
        return dist.isend(tensor.contiguous(), self.ranks[member], tag=tag)

    def irecv(self, tensor: torch.Tensor, member: int, tag: int):
        return dist.irecv(tensor, self.ranks[member], tag=tag)

    def send(self, tensor: torch.Tensor, member: int, tag: int) -> None:
        dist.send(tensor.contiguous(), self.ranks[member], tag=tag)

    def recv(self, tensor: torch.Tensor, member: int, tag: int) -> torch.Tensor:
        dist.recv(tensor, self.ranks[member], tag=tag)
        return tensor


class TiledExchange:
    """One tiled all-gather followed (optionally) by one tiled reduce-scatter of the same layout.

    Usage inside a sequence-parallel region, for `x_local` holding this member's rows:

        ex = TiledExchange(comm, layout, x_local, hidden_out)
        for member, k, rows, chunk in ex.gathered():   # own tile first, then others as they arrive
            ...compute on `chunk` (global rows `rows`)...
            ex.reduce_to(member, k, partial)           # partial sums of those rows, sent to their owner
        y_local = ex.reduced()                         # this member's rows, summed over all members

    Receives are posted up front so later tiles travel while earlier ones are computed on.
    """

    def __init__(self, comm: Communicator, layout: SequenceLayout, x_local: torch.Tensor,
                 reduce_width: int | None = None):
        self.comm, self.layout = comm, layout
        self.x_local = x_local
        self.batch = x_local.shape[0]
        self.width = x_local.shape[-1]
        self.reduce_width = reduce_width
        n, tiles = comm.size, layout.tiles
        self._ag_tag = {k: comm.next_tag() for k in range(tiles)}
        self._rs_tag = {k: comm.next_tag() for k in range(tiles)}
        self._sends: list = []
        self._ag_recv: dict[tuple[int, int], tuple[torch.Tensor, object]] = {}
        self._rs_recv: dict[tuple[int, int], tuple[torch.Tensor, object]] = {}
        me = comm.me
        for k in range(tiles):
            lo, hi = layout.local_tile(me, k)
            if hi > lo:
                mine = x_local[:, lo:hi].contiguous()
                for m in range(n):
                    if m != me:
                        self._sends.append(comm.isend(mine, m, self._ag_tag[k]))
            for m in range(n):
                if m == me:
                    continue
                glo, ghi = layout.tile(m, k)
                if ghi > glo:
                    buf = torch.empty(self.batch, ghi - glo, self.width, dtype=x_local.dtype)
                    self._ag_recv[(m, k)] = (buf, comm.irecv(buf, m, self._ag_tag[k]))
                if reduce_width is not None and hi > lo:
                    buf = torch.empty(self.batch, hi - lo, reduce_width, dtype=x_local.dtype)
                    self._rs_recv[(m, k)] = (buf, comm.irecv(buf, m, self._rs_tag[k]))
        if reduce_width is not None:
            self._own = torch.zeros(self.batch, layout.counts[me], reduce_width, dtype=x_local.dtype)

    def gathered(self):
        """(member, tile, (row_lo, row_hi), rows tensor) for every non-empty tile, own tiles without waiting."""
        me = self.comm.me
        for k in range(self.layout.tiles):
            lo, hi = self.layout.local_tile(me, k)
            if hi > lo:
                yield me, k, self.layout.tile(me, k), self.x_local[:, lo:hi]
            for m in range(self.comm.size):
                if (m, k) in self._ag_recv:
                    buf, work = self._ag_recv[(m, k)]
                    work.wait()
                    yield m, k, self.layout.tile(m, k), buf

    def reduce_to(self, member: int, k: int, partial: torch.Tensor) -> None:
        """Send the partial sums of member's tile k to it (or keep them, for this member's own rows)."""
        if member == self.comm.me:
            lo, hi = self.layout.local_tile(member, k)
            self._own[:, lo:hi] += partial
        else:
            self._sends.append(self.comm.isend(partial, member, self._rs_tag[k]))

    def reduced(self) -> torch.Tensor:
        """This member's rows summed over every member's partials; waits for everything still in flight."""
        for (m, k), (buf, work) in self._rs_recv.items():
            work.wait()
            lo, hi = self.layout.local_tile(self.comm.me, k)
            self._own[:, lo:hi] += buf
        self.finish()
        return self._own

    def finish(self) -> None:
        for work in self._sends:
            work.wait()
        self._sends = []


def gather_rows(comm: Communicator, layout: SequenceLayout, x_local: torch.Tensor, root: int = 0) -> torch.Tensor | None:
    """Every member's rows to member `root` (the full sequence there, None elsewhere)."""
    if comm.size == 1:
        return x_local
    tag = comm.next_tag()  # one tag for all messages: they come from different senders
    if comm.me != root:
        if layout.counts[comm.me]:
            comm.send(x_local, root, tag)
        return None
    parts = []
    for m in range(comm.size):
        if m == root:
            parts.append(x_local)
        elif layout.counts[m]:
            buf = torch.empty(x_local.shape[0], layout.counts[m], *x_local.shape[2:], dtype=x_local.dtype)
            parts.append(comm.recv(buf, m, tag))
    return torch.cat(parts, dim=1)


def broadcast_from(comm: Communicator, tensor: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                   root: int = 0) -> torch.Tensor:
    """Member `root`'s tensor to every member, by point-to-point sends (no subgroup needed)."""
    if comm.size == 1:
        return tensor
    tag = comm.next_tag()
    if comm.me == root:
        works = [comm.isend(tensor, m, tag) for m in range(comm.size) if m != root]
        for w in works:
            w.wait()
        return tensor
    return comm.recv(torch.empty(shape, dtype=dtype), root, tag)


def scatter_rows(comm: Communicator, layout: SequenceLayout, x_full: torch.Tensor | None, batch: int, width: int,
                 dtype: torch.dtype, root: int = 0) -> torch.Tensor:
    """Member `root`'s full sequence cut into every member's rows (the inverse of `gather_rows`)."""
    lo = layout.start(comm.me)
    if comm.size == 1:
        return x_full
    tag = comm.next_tag()
    if comm.me == root:
        works = []
        for m in range(comm.size):
            if m != root and layout.counts[m]:
                start = layout.start(m)
                works.append(comm.isend(x_full[:, start:start + layout.counts[m]], m, tag))
        for w in works:
            w.wait()
        return x_full[:, lo:lo + layout.counts[root]]
    buf = torch.empty(batch, layout.counts[comm.me], width, dtype=dtype)
    return comm.recv(buf, root, tag) if layout.counts[comm.me] else buf
