"""Which samples each device works on: the global batch cut into pipelines, micro-batches and shares.

Every rank computes the same layout from the plan, so nobody has to announce shapes or row counts at run
time. Rows are contiguous: a pipeline takes a slice of the global batch, a micro-batch a slice of the
pipeline's, and each device of a stage group a slice of every micro-batch in proportion to its share.
Samples are whole: when a share of a micro-batch is fractional (shares 0.65/0.35 of a 1-sample micro-batch),
the rounding error is carried to the next micro-batch (`diffused_counts`), so over an iteration every
device still processes its share of the samples. When
two neighbouring stage groups split a micro-batch differently, each pair of devices exchanges the rows
their slices have in common (`transfers`).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgepool.errors import SpecError
from edgepool.plan import Plan
from edgepool.shares import split_counts


def diffused_counts(sizes: list[int], weights: list[float]) -> list[list[int]]:
    """Per micro-batch of `sizes`, rows per device in proportion to `weights`, carrying rounding error forward
    so that cumulative counts stay within one row of the exact proportion."""
    total_w = sum(weights)
    assigned = [0] * len(weights)
    seen = 0
    out = []
    for size in sizes:
        seen += size
        want = [seen * w / total_w - a for w, a in zip(weights, assigned)]  # exact target minus given so far
        counts = [max(0, int(x)) for x in want]
        counts = [min(c, size) for c in counts]
        while sum(counts) > size:
            i = max(range(len(counts)), key=lambda k: (counts[k] - want[k], -k))
            counts[i] -= 1
        order = sorted(range(len(weights)), key=lambda i: (-(want[i] - counts[i]), i))
        for i in order[: size - sum(counts)]:
            counts[i] += 1
        assigned = [a + c for a, c in zip(assigned, counts)]
        out.append(counts)
    return out


def ranges_from_counts(counts: list[int], offset: int = 0) -> list[tuple[int, int]]:
    out, start = [], offset
    for c in counts:
        out.append((start, start + c))
        start += c
    return out


@dataclass(frozen=True)
class Transfer:
    """Rows [start, end) of one micro-batch (absolute within the micro-batch) going from src to dst."""

    src: str
    dst: str
    start: int
    end: int

    @property
    def rows(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class DeviceRole:
    device: str
    rank: int
    pipeline: int
    stage: int
    index_in_stage: int


class Layout:
    """The plan's devices as ranks, and the rows of each micro-batch every device handles."""

    def __init__(self, plan: Plan, batch: int | None = None):
        self.plan = plan
        self.batch = batch or plan.batch
        self.microbatches = plan.microbatches
        self.ranks: dict[str, int] = {d: r for r, d in enumerate(plan.devices)}
        self.roles: dict[str, DeviceRole] = {}
        for p, pipe in enumerate(plan.pipelines):
            for s, stage in enumerate(pipe.stages):
                for i, d in enumerate(stage.devices):
                    self.roles[d] = DeviceRole(d, self.ranks[d], p, s, i)
        # pipeline p: [start, end) of the global batch
        self.pipeline_rows = ranges_from_counts(split_counts(self.batch, [p.batch_share for p in plan.pipelines]))
        self.microbatch_rows: list[list[tuple[int, int]]] = []
        self._stage_counts: dict[tuple[int, int], list[list[int]]] = {}
        for p, (start, end) in enumerate(self.pipeline_rows):
            n = end - start
            if n < self.microbatches:
                raise SpecError(field="microbatches", value=self.microbatches,
                                accepted=f"at most {n}, the samples pipeline {p} gets from batch {self.batch}",
                                hint="raise the batch or lower the number of micro-batches")
            self.microbatch_rows.append(ranges_from_counts(split_counts(n, [1.0] * self.microbatches), start))

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def stage_of(self, device: str):
        role = self.roles[device]
        return self.plan.pipelines[role.pipeline].stages[role.stage]

    def num_stages(self, pipeline: int) -> int:
        return len(self.plan.pipelines[pipeline].stages)

    def microbatch_size(self, pipeline: int, mb: int) -> int:
        start, end = self.microbatch_rows[pipeline][mb]
        return end - start

    def device_rows(self, device: str, mb: int) -> tuple[int, int]:
        """Rows [start, end) of micro-batch `mb` (relative to the micro-batch) that `device` processes."""
        role = self.roles[device]
        key = (role.pipeline, role.stage)
        if key not in self._stage_counts:
            sizes = [self.microbatch_size(role.pipeline, m) for m in range(self.microbatches)]
            self._stage_counts[key] = diffused_counts(sizes, self.stage_of(device).shares)
        return ranges_from_counts(self._stage_counts[key][mb])[role.index_in_stage]

    def global_rows(self, device: str, mb: int) -> tuple[int, int]:
        """The same rows as indices into the global batch."""
        role = self.roles[device]
        base = self.microbatch_rows[role.pipeline][mb][0]
        start, end = self.device_rows(device, mb)
        return base + start, base + end

    def transfers(self, pipeline: int, stage: int, mb: int) -> list[Transfer]:
        """Rows moving from stage `stage` to stage `stage + 1` for micro-batch `mb` (forward direction)."""
        stages = self.plan.pipelines[pipeline].stages
        out = []
        for src in stages[stage].devices:
            a0, a1 = self.device_rows(src, mb)
            for dst in stages[stage + 1].devices:
                b0, b1 = self.device_rows(dst, mb)
                lo, hi = max(a0, b0), min(a1, b1)
                if hi > lo:
                    out.append(Transfer(src, dst, lo, hi))
        return out
