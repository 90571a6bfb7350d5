"""The process of one device under elastic supervision: `python -m edgepool.elastic.worker CONFIG.json`.

It wraps the runtime's `StageWorker` (the same stage execution, schedules and gradient all-reduce) in a
loop over *generations*. A generation is one process group over one plan, published by the supervisor in
the TCPStore as `gen/<g>`. Inside it the worker:

1. joins the process group `g<g>/` (a `PrefixStore` on the supervisor's store),
2. gets the blocks of its new stage it does not hold (from survivors or from the replica of a dead device,
   as the supervisor's `transfers` say) and loads weights and optimizer state,
3. (replay mode) sends its whole state to its ring successor, which keeps it as a replica,
4. runs iterations; after the gradient all-reduce each iteration sends its gradients to the replica holder
   and enters the *commit* (a one-number all-reduce, which also carries "a device wants to join"); only a
   committed iteration's optimizer step is applied, on the stage and on the replica.

When the generation is aborted (a peer failed) or a join is due at this boundary, it leaves the process
group, reports how many iterations it saw committed, and waits for the next generation, which tells it how
many committed iterations count (`committed`): a worker that had not yet stepped a committed iteration
applies it now; the interrupted iteration is then replayed in full, with the same samples, on the new plan.
In checkpoint mode (the baseline) it saves its stage every K iterations and is restarted from scratch.
"""
from __future__ import annotations

import datetime as _dt
import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from edgepool.atomic import write_text_atomic
from edgepool.elastic.checkpoint import save_stage_checkpoint
from edgepool.elastic.heartbeat import AbortableWait, AbortWatcher, Heartbeat, PeerFailure, connect
from edgepool.elastic.replica import BlockState, ModelIndex, Replica, capture, recv_object, restore, to_bytes
from edgepool.plan import Plan
from edgepool.runtime.data import ModelSpec, build_bundle
from edgepool.runtime.harness import read_job
from edgepool.runtime.worker import StageWorker, WorkerSpec
from edgepool.testbed.worker import apply_cpu_quota

TRANSFER_TAG = (1 << 20) + 100
LEAVE_ERRORS = (PeerFailure, dist.DistError)


class _Leave(Exception):
    """Leave this generation at an iteration boundary (a device joins)."""


class _CommitHook:
    """After the all-reduce: gradients to the replica holder, then the commit collective."""

    def __init__(self, agent: "ElasticAgent"):
        self.agent = agent
        self.join_flag = False

    def before_step(self, worker, step):
        a = self.agent
        if a.mode != "replay" or worker.layout.world_size == 1:
            return
        a.replica.exchange_gradients(worker, step, a.succ, a.pred, a.wait)
        flag = torch.zeros(1)
        if worker.rank == 0 and a.store.check([f"join_pending/{a.generation}"]):
            flag += 1
        a.wait(dist.all_reduce(flag, async_op=True))
        a.passed = step  # the iteration is committed: every rank entered the commit
        self.join_flag = bool(flag.item() > 0)
        a.record_rows(worker, step)

    def after_iteration(self, worker, step):
        pass


class ElasticAgent:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.device = cfg["device"]
        self.mode = cfg["mode"]
        self.store = connect(cfg["host"], cfg["port"], timeout_s=cfg.get("store_timeout_s", 600))
        self.heartbeat = Heartbeat(cfg["host"], cfg["port"], self.device, cfg.get("heartbeat_interval_s", 0.2)).start()
        self.model = ModelSpec.from_dict(cfg["model"])
        self.index = ModelIndex(build_bundle(self.model).blocks)
        self.replica = Replica(self.index, cfg["optimizer"], cfg["lr"])
        self.generation = cfg.get("generation", 0)
        self.own: dict[int, BlockState] | None = None
        self.own_range: tuple[int, int] | None = None
        self.applied = 0
        self.passed = -1
        self.worker: StageWorker | None = None
        self.out = Path(cfg["out_dir"])
        self.iterations: list[dict] = []
        self.recovery_log: list[dict] = []

    # ------------------------------------------------------------------ generations
    def run(self) -> None:
        if self.cfg.get("joiner"):
            self.store.set(f"join/{self.device}", repr(time.time()))
        while True:
            info = json.loads(self.store.get(f"gen/{self.generation}"))
            if self.device not in info["devices"]:
                return  # not part of the pool any more
            self._catch_up(info)
            finished = self._run_generation(info)
            if finished:
                return
            self.generation += 1

    def _catch_up(self, info: dict) -> None:
        """Apply a committed iteration whose optimizer step this worker had not reached before it left."""
        committed = info["committed"]
        if self.worker is not None and self.applied < committed:
            if self.applied != committed - 1:
                raise RuntimeError(f"{self.device}: {self.applied} steps applied, {committed} committed")
            self.worker.optimizer.step()
            self.applied = committed
        if self.worker is not None:
            self.worker.optimizer.zero_grad(set_to_none=True)
            self.own = capture(self.worker)
        if self.replica.pending is not None and self.replica.applied == committed - 1:
            self.replica.apply_pending(committed - 1)

    def _held_blocks(self, info: dict) -> dict[int, BlockState]:
        held: dict[int, BlockState] = {}
        if info.get("checkpoint"):
            for f in info["checkpoint"]["files"]:
                held.update(torch.load(f, weights_only=False)["blocks"])
            return held
        if self.own:
            held.update(self.own)
        if self.replica.blocks and self.replica.applied == info["committed"]:
            wanted = [int(b) for b, d in info["sources"].items() if d == self.device and int(b) not in held]
            if wanted:
                copy = self.replica.snapshot()
                held.update({b: copy[b] for b in wanted if b in copy})
        return held

    def _run_generation(self, info: dict) -> bool:
        g = self.generation
        plan = Plan.model_validate(info["plan"])
        rank, world = plan.devices.index(self.device), len(plan.devices)
        os.environ["EDGEPOOL_DEVICE"] = self.device
        t_join = time.time()
        timeout = _dt.timedelta(seconds=self.cfg["collective_timeout_s"])
        dist.init_process_group("gloo", store=dist.PrefixStore(f"g{g}/", self.store), rank=rank, world_size=world,
                                timeout=timeout)
        watcher = AbortWatcher(self.cfg["host"], self.cfg["port"], g)
        self.wait = AbortableWait(watcher)
        hook = _CommitHook(self)
        try:
            spec = WorkerSpec(plan=info["plan"], model=self.cfg["model"], steps=self.cfg["steps"],
                              out_dir=str(self.out), batch=self.cfg["batch"], seq=self.cfg.get("seq"),
                              data_seed=self.cfg["data_seed"], optimizer=self.cfg["optimizer"], lr=self.cfg["lr"],
                              timeout_s=self.cfg["collective_timeout_s"])
            worker = StageWorker(spec, rank, world)
            worker.wait_work = self.wait
            worker.model_index = self.index
            worker.hooks.append(hook)
            worker.t0 = time.time()
            self.applied = info["committed"]
            ckpt = info.get("checkpoint")
            if (g > 0 and not ckpt) or (ckpt and ckpt["files"]):
                held = self._held_blocks(info)
                held.update(self._transfer(info, plan, held))
                restore(worker, held)
            self.worker = worker
            self.own_range = worker.block_range
            if self.mode == "replay" and world > 1:
                self.succ, self.pred = (rank + 1) % world, (rank - 1) % world
                pred_device = plan.devices[self.pred]
                pred_range = worker.layout.stage_of(pred_device).layers
                self.replica.exchange_full(capture(worker), self.applied, self.succ, self.pred, pred_device,
                                           pred_range, self.wait)
            self.recovery_log.append({"generation": g, "ready_s": time.time() - t_join, "start_step": self.applied})
            for step in range(info["committed"], self.cfg["steps"]):
                t = time.time()
                self.store.set(f"started/{self.device}", f"{g}:{step}:{t!r}")
                worker.run_iteration(step)
                if self.cfg.get("pace_s"):
                    time.sleep(max(0.0, t + self.cfg["pace_s"] - time.time()))
                self.applied = step + 1
                if self.mode == "replay" and world > 1:
                    self.replica.apply_pending(step)
                else:
                    self.passed = step
                    self.record_rows(worker, step)
                end = time.time()
                self.iterations.append({"generation": g, "step": step, "start": t, "end": end})
                self.store.set(f"tdone/{g}/{step}/{self.device}", repr(end))
                if self.mode == "checkpoint" and (step + 1) % self.cfg["checkpoint_every"] == 0:
                    save_stage_checkpoint(worker, self.cfg["checkpoint_dir"], step + 1)
                if hook.join_flag and step + 1 < self.cfg["steps"]:
                    raise _Leave()
            self._finish(worker)
            return True
        except (_Leave, *LEAVE_ERRORS) as exc:
            self._report(g, exc)
            return False
        except RuntimeError as exc:  # a gloo error: a peer died; the supervisor aborts the generation soon
            if not watcher.aborted.wait(timeout=self.cfg.get("abort_grace_s", 10.0)):
                raise
            self._report(g, exc)
            return False
        finally:
            watcher.stop()
            try:
                dist.destroy_process_group()
            except Exception:
                pass

    def _transfer(self, info: dict, plan: Plan, held: dict[int, BlockState]) -> dict[int, BlockState]:
        """Send the blocks others need from this device (non-blocking), then receive the ones it needs."""
        ranks = {d: i for i, d in enumerate(plan.devices)}
        tag = TRANSFER_TAG + 2 * ranks[self.device]
        pending = []
        for src, dst, blocks in info["transfers"]:
            if src == self.device:
                data = to_bytes({b: held[b] for b in blocks})
                size = torch.tensor([data.numel()], dtype=torch.int64)
                pending += [(dist.isend(size, dst=ranks[dst], tag=tag), size),
                            (dist.isend(data, dst=ranks[dst], tag=tag + 1), data)]
        got: dict[int, BlockState] = {}
        for src, dst, blocks in info["transfers"]:
            if dst == self.device:
                got.update(recv_object(ranks[src], TRANSFER_TAG + 2 * ranks[src], self.wait))
        for work, _ in pending:
            self.wait(work)
        return got

    def record_rows(self, worker, step: int) -> None:
        """Samples whose loss entered this committed iteration (last stage of each pipeline)."""
        if not worker.is_last:
            return
        rows = []
        for mb in range(worker.plan.microbatches):
            g0, g1 = worker.layout.global_rows(worker.device, mb)
            if g1 > g0:
                rows.append(f"{self.generation}:{step}:{g0}-{g1}")
        if rows:
            self.store.append("rows", ";".join(rows) + ";")

    def _report(self, g: int, exc: BaseException) -> None:
        self.store.set(f"report/{g}/{self.device}", json.dumps({
            "done": self.passed + 1, "applied": self.applied, "reason": type(exc).__name__,
            "replica_of": self.replica.owner, "replica_applied": self.replica.applied, "time": time.time()}))

    def _finish(self, worker) -> None:
        torch.save(worker.state_dict(), self.out / f"state-{self.device}.pt")
        stats = self.replica.stats
        result = {"device": self.device, "iterations": self.iterations, "recovery": self.recovery_log,
                  "replica": {"bytes_sent_per_iteration": stats.bytes_sent_per_iteration[-1:] or [0],
                              "exchange_s_mean": sum(stats.exchange_s) / max(len(stats.exchange_s), 1),
                              "apply_s_mean": sum(stats.apply_s) / max(len(stats.apply_s), 1),
                              "held_bytes": stats.held_bytes, "init_s": stats.init_s,
                              "owner": self.replica.owner},
                  "wait_s": self.wait.waited_s}
        write_text_atomic(self.out / f"result-{self.device}.json", json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a worker is
    cfg = read_job(argv[0])
    try:
        agent = ElasticAgent(cfg)  # imports and the model build ran at full speed; on the testbed the
        apply_cpu_quota()  # device's CPU quota holds from here on (a no-op elsewhere)
        agent.run()
    except Exception:
        traceback.print_exc()
        (Path(cfg["out_dir"]) / f"error-{cfg['device']}.txt").write_text(traceback.format_exc())
        sys.stdout.flush()
        os._exit(1)
    # skip interpreter teardown: destroying the store clients and gloo contexts of earlier generations from
    # background threads at exit can abort the process after its work is done
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
