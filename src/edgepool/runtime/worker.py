"""The process of one device: builds its stage of the model, runs the plan's schedule, syncs gradients.

Run as `python -m edgepool.runtime.worker SPEC.json` under any launcher that sets the `torchrun`
environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE; `EDGEPOOL_DEVICE` optional). The loop is
structured so later features can hook in without touching it:

- `StageWorker.run_iteration(step)` is one iteration: the actions of `edgepool.schedule.stage_actions`
  (each a pass with the receive before it and the send after it), then the gradient all-reduce, then the
  optimizer step.
- `IterationHook.before_iteration / after_iteration` run at every iteration boundary (heartbeats,
  checkpoints, re-planning); hooks are named in the spec as "module:Class".
- `StageWorker.state_dict()` / `load_state_dict()` give the stage's weights under full-model keys
  ("block.param"), so a checkpoint of one stage can be loaded by another device.
"""
from __future__ import annotations

import datetime as _dt
import gc
import importlib
import json
import os
import platform
import resource
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
from torch import nn

from edgepool.atomic import write_text_atomic
from edgepool.plan import Plan
from edgepool.runtime.comm import GradientSync, gradient_buckets, message_tag
from edgepool.runtime.data import ModelSpec, build_bundle, make_optimizer, step_batch
from edgepool.runtime.layout import Layout
from edgepool.schedule import Action, stage_actions


@dataclass
class WorkerSpec:
    """Everything a worker needs, written once by the runner and read by every rank."""

    plan: dict
    model: dict
    steps: int
    out_dir: str
    batch: int | None = None
    seq: int | None = None
    data_seed: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    timeout_s: float = 120.0
    save_state: bool = False
    hooks: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: str | Path) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


class IterationHook:
    """Called at iteration boundaries on every rank; override what you need."""

    def before_iteration(self, worker: "StageWorker", step: int) -> None: ...

    def after_iteration(self, worker: "StageWorker", step: int) -> None: ...

    def before_step(self, worker: "StageWorker", step: int) -> None:
        """After the gradient all-reduce, before the optimizer step (elastic commit point); raising skips the step."""


class Recorder:
    """Timeline events from wall-clock timestamps (time.time(): comparable across processes of one host)."""

    def __init__(self, device: str, stage: int):
        self.device, self.stage, self.events, self.iteration = device, stage, [], 0
        self._process = psutil.Process()
        self.peak_rss = 0

    def add(self, kind: str, start: float, end: float, microbatch: int | None = None) -> None:
        self.events.append({"device": self.device, "kind": kind, "start": start, "end": end,
                            "microbatch": microbatch, "stage": self.stage, "iteration": self.iteration})

    def sample_memory(self) -> None:
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)


class StageWorker:
    def __init__(self, spec: WorkerSpec, rank: int, world_size: int):
        self.spec = spec
        self.plan = Plan.model_validate(spec.plan)
        self.layout = Layout(self.plan, spec.batch)
        if world_size != self.layout.world_size:
            raise RuntimeError(f"WORLD_SIZE={world_size} but the plan has {self.layout.world_size} devices")
        self.rank = rank
        self.device = self.plan.devices[rank]
        if os.environ.get("EDGEPOOL_DEVICE", self.device) != self.device:
            raise RuntimeError(f"rank {rank} is device {self.device!r} in the plan, but the launcher says "
                               f"{os.environ['EDGEPOOL_DEVICE']!r}")
        self.role = self.layout.roles[self.device]
        self.stage_plan = self.layout.stage_of(self.device)
        self.num_stages = self.layout.num_stages(self.role.pipeline)
        self.is_first = self.role.stage == 0
        self.is_last = self.role.stage == self.num_stages - 1
        self.rank_of = self.layout.ranks
        self.recorder = Recorder(self.device, self.role.stage)
        self.hooks: list[IterationHook] = [_load_hook(h) for h in spec.hooks]
        self.model_spec = ModelSpec.from_dict(spec.model)
        self.seq = spec.seq or self.plan.seq

        bundle = build_bundle(self.model_spec)
        if len(bundle.blocks) != self.plan.num_layers:
            raise RuntimeError(f"model {self.model_spec.label!r} has {len(bundle.blocks)} blocks; "
                               f"the plan was made for {self.plan.num_layers}")
        self.in_shape, self.out_shape = self._boundary_shapes(bundle)
        self.buckets = gradient_buckets(bundle.blocks, self.layout)
        start, end = self.stage_plan.layers
        self.block_range = (start, end)
        self.module = nn.Sequential(*(bundle.blocks[i] for i in range(start, end))).train()
        # canonical name -> parameter, for parameters this stage holds
        own = {id(p) for p in self.module.parameters()}
        self.params = {n: p for n, p in bundle.blocks.named_parameters() if id(p) in own}
        # keep only this stage: drop the other blocks and the Hugging Face wrapper
        bundle.blocks, bundle.hf_model = nn.Sequential(), None
        self.bundle = bundle
        gc.collect()
        self.optimizer = make_optimizer(list(self.params.values()), spec.optimizer, spec.lr)
        self.grad_sync = GradientSync(self.buckets, rank, spec.timeout_s)
        self.losses: list[float] = []
        self.iteration_ends: list[float] = []
        self.iteration_starts: list[float] = []
        self.iteration_cpu_s: list[float] = []  # CPU seconds of this process (all threads) per iteration
        self._sends: list[tuple[Any, float, int, str]] = []
        self._posted: dict[tuple[int, bool], tuple[list[torch.Tensor], list]] = {}  # (mb, backward) -> irecvs
        self.bytes_sent = 0

    # ------------------------------------------------------------------ setup helpers
    def _boundary_shapes(self, bundle) -> tuple[tuple, tuple]:
        """(trailing shape, dtype) of this stage's input and output, from one sample through the model."""
        start, end = self.stage_plan.layers
        x = bundle.example_input(1, self.seq)
        shapes = [(tuple(x.shape[1:]), x.dtype)]
        with torch.no_grad():
            for block in bundle.blocks:
                x = block(x)
                shapes.append((tuple(x.shape[1:]), x.dtype))
        return shapes[start], shapes[end]

    # ------------------------------------------------------------------ state access (checkpoints, replay)
    def state_dict(self) -> dict[str, torch.Tensor]:
        """This stage's weights under full-model keys ("block.param")."""
        start, _ = self.block_range
        out = {}
        for key, value in self.module.state_dict().items():
            index, _, rest = key.partition(".")
            out[f"{int(index) + start}.{rest}"] = value
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        start, end = self.block_range
        local = {}
        for key, value in state.items():
            index, _, rest = key.partition(".")
            if start <= int(index) < end:
                local[f"{int(index) - start}.{rest}"] = value
        self.module.load_state_dict(local)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        # Set-up (imports, model building) ran at full speed; from here on the testbed's CPU quota applies.
        from edgepool.testbed.worker import apply_cpu_quota

        apply_cpu_quota()
        dist.barrier()
        self.t0 = time.time()
        for step in range(self.spec.steps):
            for hook in self.hooks:
                hook.before_iteration(self, step)
            self.run_iteration(step)
            for hook in self.hooks:
                hook.after_iteration(self, step)
            self._write_progress(step + 1)
        dist.barrier()

    def run_iteration(self, step: int) -> None:
        self.recorder.iteration = step
        self.iteration_starts.append(time.time())
        cpu_start = time.process_time()
        inputs = targets = None
        if self.is_first or self.is_last:
            inputs, targets = step_batch(self.bundle, self.layout.batch, self.seq, self.spec.data_seed, step)
        saved: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
        loss_total = 0.0
        actions = stage_actions(self.plan.schedule, self.num_stages, self.role.stage, self.plan.microbatches)
        self._post_receives(actions)
        for action in actions:
            if action.kind == "fwd":
                loss = self._forward(action, inputs, targets, saved)
                loss_total += loss
            else:
                self._backward(action, saved)
            self._poll_sends()
            self.recorder.sample_memory()
        self._wait_sends()
        t = time.time()
        self.grad_sync.allreduce(self.params, wait=self.wait_work)
        self.recorder.add("allreduce", t, time.time())
        for hook in self.hooks:
            if hasattr(hook, "before_step"):
                hook.before_step(self, step)
        t = time.time()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.recorder.add("optimizer", t, time.time())
        self.recorder.sample_memory()
        self.losses.append(loss_total)
        self.iteration_ends.append(time.time())
        self.iteration_cpu_s.append(time.process_time() - cpu_start)

    def _forward(self, action: Action, inputs, targets, saved) -> float:
        mb = action.microbatch
        r0, r1 = self.layout.device_rows(self.device, mb)
        if r1 == r0:
            return 0.0
        g0, g1 = self.layout.global_rows(self.device, mb)
        if action.recv_from is None:
            x = inputs[g0:g1]
        else:
            x = self._receive(action).requires_grad_(self.in_shape[1].is_floating_point)
        t = time.time()
        out = self.module(x)
        loss_value = 0.0
        if self.is_last:
            loss = self.bundle.loss(out, targets[g0:g1]) * ((r1 - r0) / self.layout.batch)
            loss_value = float(loss.detach())
            saved[mb] = (x, loss)
        else:
            saved[mb] = (x, out)
        self.recorder.add("fwd", t, time.time(), mb)
        if action.send_to is not None:
            for peer, start, end in self._pieces(action.send_to, mb):
                self._send(out[start - r0:end - r0].detach().contiguous(), peer, action)
        return loss_value

    def _backward(self, action: Action, saved) -> None:
        mb = action.microbatch
        if mb not in saved:  # this device has no rows of the micro-batch
            return
        x, out = saved.pop(mb)
        r0, _ = self.layout.device_rows(self.device, mb)
        grad = None if action.recv_from is None else self._receive(action)
        t = time.time()
        if not out.requires_grad:
            pass  # a first stage without parameters: nothing before it to send a gradient to
        elif grad is None:  # the last stage starts from its own loss
            out.backward()
        else:
            out.backward(grad)
        self.recorder.add("bwd", t, time.time(), mb)
        if action.send_to is not None:
            for peer, start, end in self._pieces(action.send_to, mb):
                self._send(x.grad[start - r0:end - r0].contiguous(), peer, action)

    # ------------------------------------------------------------------ point to point
    def wait_work(self, work) -> None:
        """Wait for one async message or collective; the elastic worker overrides this to abort on a peer's failure."""
        work.wait()

    def _pieces(self, peer_stage: int, mb: int) -> list[tuple[str, int, int]]:
        """(peer device, first row, end row) of each piece of micro-batch `mb` this device exchanges with the
        neighbouring stage `peer_stage`, rows counted in the micro-batch, in the layout's order."""
        sending_down = peer_stage > self.role.stage  # toward the last stage: this device is the source
        pieces = []
        for tr in self.layout.transfers(self.role.pipeline, min(self.role.stage, peer_stage), mb):
            if (tr.src if sending_down else tr.dst) == self.device:
                pieces.append((tr.dst if sending_down else tr.src, tr.start, tr.end))
        return pieces

    def _post_receives(self, actions: list[Action]) -> None:
        """Post every receive of the iteration up front, in the actions' order: gloo's TCP pair sends a buffer
        only after the peer has announced the matching receive, so a receive posted when the stage gets to it
        puts the whole transfer on the stage's critical path (measured: ~11 ms per 128 KiB message at
        100 Mbps after every pass of the pi)."""
        for action in actions:
            r0, r1 = self.layout.device_rows(self.device, action.microbatch)
            if r1 > r0 and action.recv_from is not None:
                self._posted[(action.microbatch, action.kind == "bwd")] = self._post_receive(action)

    def _post_receive(self, action: Action) -> tuple[list[torch.Tensor], list]:
        """irecvs for the rows of this device's slice of the action's micro-batch from the stage it receives
        from: the stage's input before a forward, its output's gradient before a backward."""
        backward = action.kind == "bwd"
        shape, dtype = self.out_shape if backward else self.in_shape
        pieces, works = [], []
        for peer, start, end in sorted(self._pieces(action.recv_from, action.microbatch), key=lambda p: p[1]):
            buf = torch.empty((end - start, *shape), dtype=dtype)
            works.append(dist.irecv(buf, src=self.rank_of[peer], tag=message_tag(action.microbatch, backward)))
            pieces.append(buf)
        return pieces, works

    def _receive(self, action: Action) -> torch.Tensor:
        """This device's slice of the action's micro-batch, in row order; the span recorded is the time blocked."""
        mb = action.microbatch
        pieces, works = self._posted.pop((mb, action.kind == "bwd"))
        start = time.time()
        for w in works:
            self.wait_work(w)
        self.recorder.add("recv", start, time.time(), mb)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _send(self, tensor: torch.Tensor, peer: str, action: Action) -> None:
        mb = action.microbatch
        work = dist.isend(tensor, dst=self.rank_of[peer], tag=message_tag(mb, action.kind == "bwd"))
        self._sends.append((work, time.time(), mb, tensor))
        self.bytes_sent += tensor.numel() * tensor.element_size()

    def _poll_sends(self) -> None:
        pending = []
        now = time.time()
        for work, start, mb, tensor in self._sends:
            if work.is_completed():
                self.recorder.add("send", start, now, mb)
            else:
                pending.append((work, start, mb, tensor))
        self._sends = pending

    def _wait_sends(self) -> None:
        for work, start, mb, _ in self._sends:
            self.wait_work(work)
            self.recorder.add("send", start, time.time(), mb)
        self._sends = []

    # ------------------------------------------------------------------ output
    def _write_progress(self, done: int) -> None:
        write_text_atomic(Path(self.spec.out_dir) / f"progress-rank{self.rank}", str(done))

    def result(self) -> dict:
        return {
            "device": self.device, "rank": self.rank, "pipeline": self.role.pipeline, "stage": self.role.stage,
            "layers": list(self.block_range), "t0": self.t0, "events": self.recorder.events,
            "iteration_starts": self.iteration_starts, "iteration_ends": self.iteration_ends,
            "iteration_cpu_s": self.iteration_cpu_s,
            "losses": self.losses if self.is_last else [], "peak_rss_bytes": self.recorder.peak_rss,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "bytes_sent": self.bytes_sent, "allreduce_bytes": self.grad_sync.bytes_per_iteration,
            "pid": os.getpid(), "torch_threads": torch.get_num_threads(), "host": platform.node(),
            "cpu_count": os.cpu_count(),
        }

    def write_result(self) -> None:
        out = Path(self.spec.out_dir)
        if self.spec.save_state:
            torch.save(self.state_dict(), out / f"state-rank{self.rank}.pt")
        write_text_atomic(out / f"result-rank{self.rank}.json", json.dumps(self.result()))


def _load_hook(path: str) -> IterationHook:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)()


def _connect(spec: WorkerSpec, rank: int, world: int, error_file: Path) -> None:
    """Join the process group on the interface that routes to MASTER_ADDR, within the spec's timeout.

    gloo's own connect can wait past its timeout when a peer died mid-connect (seen: 300 s with a 120 s timeout),
    so a watchdog thread ends the process with one line in `error_file` and a non-zero exit."""
    from edgepool.runtime.netif import choose_gloo_interface

    device = os.environ.get("EDGEPOOL_DEVICE", f"rank {rank}")
    ifname, how = choose_gloo_interface()
    print(f"edgepool worker {device} (rank {rank} of {world}): {how}", file=sys.stderr, flush=True)
    message = (f"{device} (rank {rank}) could not connect to all {world} workers within the plan's timeout of "
               f"{spec.timeout_s:g} s (MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
               f"GLOO_SOCKET_IFNAME={ifname}); check that every host runs its command and that the "
               f"interface reaches the other hosts")
    connected = threading.Event()

    def watchdog() -> None:
        if not connected.wait(spec.timeout_s + 5.0):  # a little after gloo's own timeout, which says more
            print(f"error: {message}", file=sys.stderr, flush=True)
            write_text_atomic(error_file, message + "\n")
            os._exit(3)

    threading.Thread(target=watchdog, name="edgepool-connect-watchdog", daemon=True).start()
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=_dt.timedelta(seconds=spec.timeout_s))
    finally:
        connected.set()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m edgepool.runtime.worker SPEC.json", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    spec = WorkerSpec.load(argv[0])
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for stale in (f"result-rank{rank}.json", f"error-rank{rank}.txt"):  # an earlier run's, in a reused folder
        (out / stale).unlink(missing_ok=True)
    copy = out / "worker-spec.json"  # `edgepool report gather` reads the plan the results belong to from here
    if Path(argv[0]).resolve() != copy.resolve():
        try:
            spec.save(copy)
        except OSError:  # another rank of this host wrote it at the same moment
            pass
    try:
        _connect(spec, rank, world, out / f"error-rank{rank}.txt")
        worker = StageWorker(spec, rank, world)
        worker.run()
        worker.write_result()
    except Exception:
        traceback.print_exc()
        error = Path(spec.out_dir) / f"error-rank{rank}.txt"
        error.write_text(traceback.format_exc())
        return 1
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
