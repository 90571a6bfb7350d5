"""Stage state as blocks, and the in-memory replica each device keeps of its ring predecessor.

State is kept per model block (`BlockState`: the block's weights under full-model keys, and the optimizer
state of every parameter the block uses, by canonical name) so it can be re-partitioned to any new plan.

The replica (Asteroid's in-memory backup on a neighbour): at the start of a generation every device sends its
whole state to its successor in the ring of the plan's devices; after that, every iteration it sends only its
*gradients* (after the all-reduce, before the commit), and the successor applies the same optimizer step to
its copy. That keeps an exact copy of the predecessor's weights and optimizer state after every optimizer step
at the cost of one gradient-sized message per iteration (cheaper than resending Adam's 3x state) plus an
optimizer step on the copy; `ReplicaStats` measures both and the bytes held.
"""
from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from edgepool.runtime.data import make_optimizer

REPLICA_TAG = 1 << 20  # well above the runtime's micro-batch tags
STATE_TAG = REPLICA_TAG + 2


@dataclass
class BlockState:
    weights: dict[str, torch.Tensor]  # full-model keys "block.rest"
    optim: dict[str, dict]  # canonical parameter name -> optimizer state of that parameter

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in self.weights.values())
        for st in self.optim.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        return n


def capture(worker) -> dict[int, BlockState]:
    """The worker's stage as blocks (copies), with optimizer state by canonical parameter name."""
    weights = {k: v.detach().clone() for k, v in worker.state_dict().items()}
    opt_by_name = {name: copy.deepcopy(worker.optimizer.state[p]) for name, p in worker.params.items()
                   if p in worker.optimizer.state}
    start, end = worker.block_range
    out = {}
    for b in range(start, end):
        w = {k: v for k, v in weights.items() if int(k.partition(".")[0]) == b}
        names = worker.model_index.block_params(b)
        out[b] = BlockState(w, {n: opt_by_name[n] for n in names if n in opt_by_name})
    return out


def restore(worker, blocks: dict[int, BlockState]) -> None:
    """Load the worker's stage from blocks (weights strictly; optimizer state where there is some)."""
    start, end = worker.block_range
    missing = [b for b in range(start, end) if b not in blocks]
    if missing:
        raise RuntimeError(f"{worker.device}: no state for blocks {missing} of its new stage")
    weights = {}
    optim = {}
    for b in range(start, end):
        weights.update(blocks[b].weights)
        optim.update(blocks[b].optim)
    worker.load_state_dict(weights)
    for name, p in worker.params.items():
        if name in optim:
            worker.optimizer.state[p] = copy.deepcopy(optim[name])


def to_bytes(obj) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def from_bytes(t: torch.Tensor):
    return torch.load(io.BytesIO(t.numpy().tobytes()), weights_only=False)


def recv_object(src: int, tag: int, wait):
    size = torch.zeros(1, dtype=torch.int64)
    wait(dist.irecv(size, src=src, tag=tag))
    data = torch.empty(int(size), dtype=torch.uint8)
    wait(dist.irecv(data, src=src, tag=tag + 1))
    return from_bytes(data)


@dataclass
class ReplicaStats:
    bytes_sent_per_iteration: list[int] = field(default_factory=list)
    exchange_s: list[float] = field(default_factory=list)
    apply_s: list[float] = field(default_factory=list)
    held_bytes: int = 0
    init_s: float = 0.0


class ModelIndex:
    """Which canonical parameters each block uses and under which full-model weight keys (tied weights too)."""

    def __init__(self, blocks: nn.Sequential):
        name_of = {id(p): n for n, p in blocks.named_parameters()}
        self.order = list(name_of.values())
        self.block_keys: list[dict[str, str]] = []  # per block: weight key -> canonical name
        for b, block in enumerate(blocks):
            self.block_keys.append({f"{b}.{k}": name_of[id(p)]
                                    for k, p in block.named_parameters(remove_duplicate=False)})

    def block_params(self, b: int) -> list[str]:
        return sorted(set(self.block_keys[b].values()), key=self.order.index)

    def stage_params(self, start: int, end: int) -> list[str]:
        names = {n for b in range(start, end) for n in self.block_keys[b].values()}
        return [n for n in self.order if n in names]

    def weight_keys(self, name: str, start: int, end: int) -> list[str]:
        return [k for b in range(start, end) for k, n in self.block_keys[b].items() if n == name]


class Replica:
    """This device's copy of its ring predecessor's blocks, kept current by gradients and an optimizer step."""

    def __init__(self, index: ModelIndex, optimizer: str, lr: float):
        self.index, self.optimizer_name, self.lr = index, optimizer, lr
        self.owner: str | None = None
        self.range = (0, 0)
        self.blocks: dict[int, BlockState] = {}
        self.applied = 0  # optimizer steps contained in the copy
        self.pending: tuple[int, torch.Tensor] | None = None  # (step, flat gradients)
        self.stats = ReplicaStats()
        self._params: dict[str, nn.Parameter] = {}
        self._opt = None

    def exchange_full(self, own: dict[int, BlockState], applied: int, succ: int, pred: int, pred_device: str,
                      pred_range: tuple[int, int], wait) -> None:
        """Send this device's whole state to its successor, receive the predecessor's (once per generation)."""
        t = time.perf_counter()
        data = to_bytes({"blocks": own, "applied": applied})
        size = torch.tensor([data.numel()], dtype=torch.int64)
        sends = [dist.isend(size, dst=succ, tag=STATE_TAG), dist.isend(data, dst=succ, tag=STATE_TAG + 1)]
        got = recv_object(pred, STATE_TAG, wait)
        for w in sends:
            wait(w)
        self.owner, self.range, self.blocks = pred_device, tuple(pred_range), got["blocks"]
        self.applied, self.pending = got["applied"], None
        self._params = {}
        optim = {n: st for bs in self.blocks.values() for n, st in bs.optim.items()}
        start, end = self.range
        for n in self.index.stage_params(start, end):
            key = self.index.weight_keys(n, start, end)[0]
            self._params[n] = nn.Parameter(self.blocks[int(key.partition(".")[0])].weights[key].clone())
        self._opt = make_optimizer(list(self._params.values()), self.optimizer_name, self.lr) \
            if self._params else None
        for n, p in self._params.items():
            if n in optim:
                self._opt.state[p] = copy.deepcopy(optim[n])
        self.stats.init_s += time.perf_counter() - t
        self.stats.held_bytes = sum(b.nbytes() for b in self.blocks.values())

    def exchange_gradients(self, worker, step: int, succ: int, pred: int, wait) -> None:
        """Send this stage's (all-reduced) gradients to the successor; receive the predecessor's."""
        t = time.perf_counter()
        names = self.index.stage_params(*worker.block_range)
        grads = [worker.params[n].grad if worker.params[n].grad is not None else torch.zeros_like(worker.params[n])
                 for n in names]
        flat = torch.cat([g.reshape(-1) for g in grads]) if grads else torch.zeros(0)
        send = dist.isend(flat, dst=succ, tag=REPLICA_TAG)
        buf = torch.empty(sum(p.numel() for p in self._params.values()))
        wait(dist.irecv(buf, src=pred, tag=REPLICA_TAG))
        wait(send)
        self.pending = (step, buf)
        self.stats.bytes_sent_per_iteration.append(flat.numel() * flat.element_size())
        self.stats.exchange_s.append(time.perf_counter() - t)

    def apply_pending(self, step: int) -> None:
        """Apply the predecessor's gradients of `step` once that step committed: the copy stays exact."""
        if self.pending is None or self.pending[0] != step:
            raise RuntimeError(f"replica of {self.owner}: no gradients for step {step}")
        t = time.perf_counter()
        if self._opt is not None:
            flat, offset = self.pending[1], 0
            for p in self._params.values():
                p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            self._opt.step()
            self._opt.zero_grad(set_to_none=True)
        self.pending = None
        self.applied = step + 1
        self.stats.apply_s.append(time.perf_counter() - t)

    def snapshot(self) -> dict[int, BlockState]:
        """The copy as blocks: current weights (every key of a tied parameter) and optimizer state."""
        start, end = self.range
        out = {b: BlockState({k: v.clone() for k, v in bs.weights.items()}, {}) for b, bs in self.blocks.items()}
        for n, p in self._params.items():
            for key in self.index.weight_keys(n, start, end):
                b = int(key.partition(".")[0])
                out[b].weights[key] = p.detach().clone()
                if self._opt is not None and p in self._opt.state:
                    out[b].optim[n] = copy.deepcopy(self._opt.state[p])
        return out
