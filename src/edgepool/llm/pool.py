"""The coordinator's side of a pooled LLM: an executor that runs the engine's steps as pipeline stages, one
process per device, and survives a device that leaves.

`PooledExecutor` has the engine executor's one method, `execute(StepPlan) -> {request id: token}`, so the
engine's scheduler, block manager and KV policies drive a pool exactly as they drive one process. Each step
it splits the batch into micro-batches (as many as stages, balanced by tokens), writes one `StepMessage` to
the `torch.distributed` TCPStore it hosts, and waits for the last stage's tokens.

A device that leaves (its process exits, e.g. SIGKILL) is noticed while waiting; the survivors are stopped,
`replan(survivors)` gives the new stages, a new generation of workers starts, and `execute` raises
`PoolChanged`: the engine drops every KV cache and requeues each live request to recompute from the tokens it
already has, so no request is lost and no token is repeated or skipped. `join(device)` adds a device at the
next step the same way.
"""
from __future__ import annotations

import datetime
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from edgepool.llm.messages import StepMessage, ready_key, step_key, tokens_key
from edgepool.runtime.harness import WorkerJob, worker_argv
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.engine import PoolChanged, step_inputs
from edgepool.serving.request import Request
from edgepool.serving.scheduler import StepPlan

WORKER_MODULE = "edgepool.llm.stage_worker"
LOST = b"edgepool:stage-lost"   # what the watcher answers in place of a stage that is gone


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the device that runs it and its transformer layers `[first, end)`."""

    device: str
    first: int
    end: int


@dataclass
class PoolEvent:
    """A change of the pool: who left or joined, the new stages, and how long the re-plan took."""

    kind: str                      # "left" | "joined"
    devices: list[str]
    stages: list[Stage]
    at_s: float                    # since the pool started
    recovery_s: float
    requeued: int = 0


class StageLost(RuntimeError):
    def __init__(self, devices: list[str], detail: str):
        super().__init__(f"device(s) {', '.join(devices)} left the pool: {detail}")
        self.devices = devices


def microbatches(requests: list[Request], count: int) -> list[list[Request]]:
    """Split the batch into `count` contiguous groups of about equal tokens to compute (none empty)."""
    count = max(1, min(count, len(requests)))
    total = sum(r.tokens_to_compute for r in requests)
    groups: list[list[Request]] = [[]]
    done = 0
    for i, request in enumerate(requests):
        left_groups, left_requests = count - len(groups), len(requests) - i
        if groups[-1] and (done >= total * len(groups) / count or left_requests == left_groups) and left_groups > 0:
            groups.append([])
        groups[-1].append(request)
        done += request.tokens_to_compute
    return groups


def even_stages(devices: list[str], num_layers: int) -> list[Stage]:
    """Layers split as evenly as possible over `devices`, in that order (a simple default re-plan)."""
    k = len(devices)
    edges = [round(i * num_layers / k) for i in range(k + 1)]
    return [Stage(d, a, b) for d, a, b in zip(devices, edges, edges[1:])]


@dataclass
class PoolOptions:
    block_size: int = 16
    num_host_blocks: int = 64
    dtype: str = "float32"
    threads: dict[str, int] = field(default_factory=dict)
    start_timeout_s: float = 300.0
    step_timeout_s: float = 300.0
    poll_s: float = 0.05            # how often the watcher checks that every stage's process is alive


class PooledExecutor:
    """Runs steps on stage processes started by `launcher` (local processes, the emulated testbed)."""

    def __init__(self, folder: str | Path, stages: list[Stage], launcher, *,
                 num_blocks: Callable[[list[Stage]], int], replan: Callable[[list[str]], list[Stage]],
                 options: PoolOptions | None = None, work_dir: str | Path | None = None,
                 model: str | None = None):
        self.folder, self.launcher = Path(folder), launcher
        self.model = model  # the checkpoint's name, which a device without `folder` resolves itself
        self.block_budget, self.replan = num_blocks, replan
        self.options = options or PoolOptions()
        self.work_dir = Path(work_dir) if work_dir else None
        self.stages: list[Stage] = []
        self.num_blocks = 0
        self.blocks: BlockManager | None = None       # the engine's block manager (block tables)
        self.events: list[PoolEvent] = []
        self.stage_bytes: dict[str, int] = {}          # device -> weights + KV bytes its stage allocated
        self.generation = -1
        self._handles: list = []
        self._step = 0
        self._joining: list[str] = []
        self._jobs: list[WorkerJob] = []   # one folder per generation (job file and the stages' logs)
        self._t0 = time.monotonic()
        host = launcher.coordinator_address()
        with launcher.coordinator_namespace():  # port 0: the store picks a free port there
            self.store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=self.options.step_timeout_s))
            self.store_host, self.store_port = host, self.store.port
            # the watcher's own connection: a client blocked in wait() holds its socket
            self._watch_store = dist.TCPStore(host, self.store_port, is_master=False)
        self._waiting_on: str | None = None
        self._closing = threading.Event()
        threading.Thread(target=self._watch, name="edgepool-pool-watch", daemon=True).start()
        try:
            self._launch(stages)
        except BaseException:   # a stage that cannot start (out of memory, a bad checkpoint): stop the rest
            self.close(keep_logs=True)
            raise

    @property
    def devices(self) -> list[str]:
        return [s.device for s in self.stages]

    # --- generations of workers ------------------------------------------------------------------
    def _launch(self, stages: list[Stage]) -> None:
        self.generation += 1
        self.stages, self._step = list(stages), 0
        self.num_blocks = self.block_budget(self.stages)
        payload = {"devices": self.devices, "stages": [(s.first, s.end) for s in stages],
                   "folder": str(self.folder), "model": self.model, "generation": self.generation, "num_blocks": self.num_blocks,
                   "block_size": self.options.block_size, "num_host_blocks": self.options.num_host_blocks,
                   "dtype": self.options.dtype, "threads": self.options.threads,
                   "store_host": self.store_host, "store_port": self.store_port,
                   "timeout_s": int(self.options.step_timeout_s)}
        folder = self.work_dir / f"gen{self.generation}" if self.work_dir else None
        job = WorkerJob.create(payload, folder, prefix="edgepool-llm-")
        self._jobs.append(job)
        self._handles = self.launcher.launch({d: worker_argv(WORKER_MODULE, job.path) for d in self.devices},
                                             log_dir=job.folder / "logs")
        for rank in range(len(stages)):
            self.stage_bytes[self.devices[rank]] = int(self._await(ready_key(self.generation, rank),
                                                                   self.options.start_timeout_s))

    def _dead(self) -> list:
        return [h for h in self._handles if h.poll() is not None]

    def _watch(self) -> None:
        """Watcher thread: while a stage's process is gone, answer the key the coordinator waits on with
        `LOST`, so that a blocking wait ends at once (no polling, no timeouts in the store's log)."""
        while not self._closing.wait(self.options.poll_s):
            key = self._waiting_on
            if key is not None and self._dead():
                try:
                    self._watch_store.set(key, LOST)
                except Exception:  # noqa: BLE001 - the store is going away with the pool
                    return

    def _await(self, key: str, timeout_s: float) -> bytes:
        """The value of `key` once a stage sets it; raises StageLost as soon as a stage's process is gone."""
        self._waiting_on = key
        try:
            self.store.wait([key], datetime.timedelta(seconds=timeout_s))
        except (dist.DistStoreError, RuntimeError) as error:
            raise TimeoutError(f"no answer from the stages for {key} within {timeout_s:.0f} s "
                               f"(devices {', '.join(self.devices)})") from error
        finally:
            self._waiting_on = None
        value = self.store.get(key)
        if value != LOST:
            return value
        time.sleep(0.2)  # let a collateral exit (a neighbour's failed receive) show up too
        dead = self._dead()
        killed = [h for h in dead if h.poll() < 0] or dead  # ended by a signal: the device that left
        raise StageLost([h.device for h in killed], "; ".join(f"{h.device} exited with status {h.poll()}" for h in dead)
                        + (f" (logs: {self._jobs[-1].folder / 'logs'})" if self._jobs else ""))

    def _restart(self, kind: str, devices: list[str], survivors: list[str]) -> None:
        """Stop this generation, re-plan on `survivors`, start the next one, and tell the engine."""
        start = time.monotonic()
        stop = getattr(self.launcher, "stop_workers", None)
        if stop is not None:
            stop()
        if not survivors:
            raise RuntimeError(f"no device left in the pool ({kind}: {', '.join(devices)})")
        stages = self.replan(survivors)
        self._launch(stages)
        self.events.append(PoolEvent(kind, devices, stages, start - self._t0, time.monotonic() - start))
        raise PoolChanged(f"{kind}: {', '.join(devices)}; now {len(stages)} stage(s) on {', '.join(self.devices)}",
                          self.num_blocks)

    def join(self, device: str) -> None:
        """Use `device` from the next step on (after a re-plan that includes it)."""
        if device not in self.devices and device not in self._joining:
            self._joining.append(device)

    # --- the engine's executor interface ----------------------------------------------------------
    def execute(self, plan: StepPlan) -> dict[str, int]:
        if self._joining:
            joining, self._joining = self._joining, []
            self._restart("joined", joining, self.devices + joining)
        groups = microbatches(plan.batch, len(self.stages)) if plan.batch else []
        message = StepMessage(plan.swap_out, plan.swap_in, [step_inputs(g, self.blocks) for g in groups])
        step = self._step
        self.store.set(step_key(self.generation, step), pickle.dumps(message))
        self._step += 1
        if not plan.batch:
            return {}
        try:
            raw = self._await(tokens_key(self.generation, step), self.options.step_timeout_s)
        except StageLost as lost:
            survivors = [d for d in self.devices if d not in lost.devices]
            self._restart("left", lost.devices, survivors)
        self.store.delete_key(step_key(self.generation, step))
        self.store.delete_key(tokens_key(self.generation, step))
        tokens = pickle.loads(raw)
        return {r.request_id: t for r, t in zip(plan.batch, tokens)}

    def close(self, keep_logs: bool = False) -> None:
        """Ask the stages to leave, then stop whatever is left; temporary job folders go unless `keep_logs`."""
        self._closing.set()
        try:
            self.store.set(step_key(self.generation, self._step), pickle.dumps(StepMessage(stop=True)))
            deadline = time.monotonic() + 5.0
            while any(h.poll() is None for h in self._handles) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop = getattr(self.launcher, "stop_workers", None)
            if stop is not None:
                stop()
            if self.work_dir is None and not keep_logs:  # temporary folders go with the pool (a work_dir stays)
                for job in self._jobs:
                    job.discard()
