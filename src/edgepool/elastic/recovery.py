"""The elastic supervisor: membership, failure detection, re-planning and the recovery decision.

`ElasticRun` starts one worker process per device (`edgepool.elastic.worker`), hosts the TCPStore (it outlives
every worker, so it is the one place that can tell survivors a peer is gone), and watches: a worker whose
process exits with an error, or whose heartbeat is older than `heartbeat_timeout_s` (it is then fenced with
SIGKILL, so a hung or unreachable device cannot come back half-way), is dead. What happens then is the
run's `RecoveryStrategy` (strategy.py). With `PipelineReplay` it

1. sets `abort/<g>` so that every survivor leaves its process group (no wait hangs: they poll that key),
2. collects the survivors' reports and decides how many iterations committed (an iteration commits when every
   rank entered its commit collective; survivors report the last one they saw pass),
3. names, for every model block, who holds its state now (a survivor that served it, or the ring successor
   that holds the dead device's replica);
4. the supervisor re-plans on the survivors with the training planner (`replan(devices) -> Plan`, e.g.
   `replan.default_replan`), works out which blocks move where for the new plan (`handover.py`),
5. and publishes generation g+1; the workers replay the interrupted iteration on the new plan.

A join is the same without a death: the new device announces itself (`join/<device>` in the store), the
supervisor sets `join_pending/<g>`, rank 0 carries that flag through the next commit, and every worker leaves
at that iteration boundary; generation g+1 includes the new device and hands it its share.

We do not use `torchrun`'s elastic agent here: on any membership change it restarts every worker process,
which throws away the in-memory state that pipeline replay keeps; that is the checkpoint-restart baseline
(`CheckpointRestart`, which this supervisor also runs: kill everyone, re-plan, restart from the last
checkpoint). Its building block, the c10d TCPStore, is what membership and heartbeats go through.

Workers start through a launcher (`edgepool.testbed.make_launcher`): `launcher="local"` runs plain processes
on loopback; `launcher="testbed"` runs each device in its cgroup and network namespace of an emulated
`cluster` (CPU quotas, memory limits and link bandwidths from the cluster spec), and the supervisor opens its
store inside the testbed's hub namespace, where every device reaches it at the bridge's address. A launcher
object may be given instead of a name, such as the pool's (`edgepool.pool.launcher.PoolLauncher`: workers on
real devices through their agents); the run starts it and tears it down.
"""
from __future__ import annotations

import datetime as _dt
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from edgepool.elastic.checkpoint import latest_checkpoint
from edgepool.elastic.handover import block_transfers
from edgepool.elastic.heartbeat import stale_devices
from edgepool.elastic.strategy import Failure, Join, PipelineReplay, RecoveryFailed, RecoveryStrategy, Resume
from edgepool.errors import SpecError
from edgepool.plan import Plan
from edgepool.runtime.data import ModelSpec
from edgepool.runtime.harness import describe_launcher, read_results, worker_argv, write_job
from edgepool.runtime.launch import LAUNCHERS
from edgepool.testbed.launcher import WorkerHandle

WORKER = "edgepool.elastic.worker"


@dataclass(frozen=True)
class Training:
    """What every worker trains with: batch and sequence length (default: the plan's), data seed, optimizer."""
    batch: int | None = None
    seq: int | None = None
    data_seed: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01


@dataclass(frozen=True)
class Supervision:
    """How the supervisor watches: a heartbeat older than `heartbeat_timeout_s` declares a device dead, the
    workers' collectives give up after `collective_timeout_s`, the whole run after `timeout_s`, and no
    iteration is faster than `pace_s` (a sleep, to give demos and tests time to watch)."""
    heartbeat_timeout_s: float = 3.0
    collective_timeout_s: float = 60.0
    timeout_s: float = 300.0
    pace_s: float = 0.0


@dataclass(frozen=True)
class FailureSpec:
    """Kill `device` (SIGKILL) `fraction` of an iteration into iteration `step` (0-based)."""
    device: str
    step: int
    fraction: float = 0.5


@dataclass(frozen=True)
class JoinSpec:
    """Start `device` once iteration `step` has started; it joins at the next iteration boundary."""
    device: str
    step: int


@dataclass
class ElasticOutcome:
    mode: str
    out_dir: Path
    plans: list[Plan]
    events: list[dict]  # failures, joins, recoveries with wall-clock times
    completions: dict[int, float]  # step -> wall-clock time its last (surviving) iteration completed
    results: dict[str, dict]
    state: dict[str, torch.Tensor]  # final weights, full-model keys
    samples: dict[str, int]
    t_start: float
    where: dict = field(default_factory=dict)  # the launcher's description: local processes or the testbed

    def recovery_times(self) -> list[dict]:
        """Per failure: seconds until the interrupted iteration (and the first iteration) completed again."""
        out = []
        for ev in self.events:
            if ev["kind"] != "failure":
                continue
            step, t = ev["step"], ev["time"]
            regained = self.completions.get(step)
            first = min((c for c in self.restarted_completions(ev) if c > t), default=None)
            out.append({"device": ev["device"], "step": step,
                        "time_to_interrupted_iteration_s": None if regained is None else regained - t,
                        "time_to_first_iteration_s": None if first is None else first - t})
        return out

    def restarted_completions(self, ev: dict) -> list[float]:
        return [c["time"] for c in ev.get("after", [])]


class ElasticRun:
    """Run `plan` for `steps` iterations under elastic supervision, injecting `failures` and `joins`, recovering
    with `strategy` (default `PipelineReplay()`); `env` is added to the workers' environment."""

    def __init__(self, plan: Plan, model: ModelSpec, steps: int, replan: Callable[[list[str]], Plan],
                 strategy: RecoveryStrategy | None = None, *, failures: list[FailureSpec] = (),
                 joins: list[JoinSpec] = (), training: Training = Training(), supervision: Supervision = Supervision(),
                 out_dir: str | Path | None = None, env: dict[str, str] | None = None,
                 progress: Callable[[int, int], None] | None = None, launcher="local", cluster=None,
                 testbed_options: dict | None = None):
        strategy = strategy or PipelineReplay()
        if not isinstance(strategy, RecoveryStrategy):
            raise SpecError(field="strategy", value=strategy, accepted="a RecoveryStrategy",
                            hint="map a name to one with edgepool.elastic.strategy.recovery_strategy")
        if steps < 1:
            raise SpecError(field="steps", value=steps, accepted="an integer >= 1")
        for f in failures:
            if f.device not in plan.devices:
                raise SpecError(field="failures", value=f"{f.device}@{f.step}", accepted=", ".join(plan.devices),
                                hint="name a device of the plan")
            if not 0 <= f.step < steps:
                raise SpecError(field="failures", value=f"{f.device}@{f.step}",
                                accepted=f"a step in 0..{steps - 1}")
        if isinstance(launcher, str) and launcher not in LAUNCHERS:
            raise SpecError(field="launcher", value=launcher, accepted=", ".join(LAUNCHERS))
        if launcher == "testbed" and cluster is None:
            raise SpecError(field="cluster", value=None, accepted="the Cluster to emulate",
                            hint="the testbed takes CPU quotas, memory limits and link bandwidths from it")
        self.plan, self.model, self.steps, self.replan, self.strategy = plan, model, steps, replan, strategy
        self.mode = strategy.name  # the workers' mode: what they keep (replicas or checkpoints)
        self.batch, self.seq = training.batch or plan.batch, training.seq or plan.seq
        self.data_seed, self.optimizer, self.lr = training.data_seed, training.optimizer, training.lr
        self.out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"edgepool-elastic-{self.mode}-"))
        self.failures, self.joins = list(failures), list(joins)
        self.checkpoint_every = strategy.checkpoint_every
        self.heartbeat_timeout_s, self.collective_timeout_s, self.timeout_s = (supervision.heartbeat_timeout_s,
                                                                               supervision.collective_timeout_s,
                                                                               supervision.timeout_s)
        self.env, self.progress = env or {}, progress
        self.pace_s = supervision.pace_s
        self.launcher_kind, self.cluster = launcher, cluster
        # on the testbed a worker imports torch and builds its model at full speed, then applies its CPU quota
        self.testbed_options = {"cpu_quota_at_start": False, **(testbed_options or {})}
        self.launcher = None  # the launcher of the last `run()`, for its description and leftovers

    # ------------------------------------------------------------------ processes
    def _config(self, device: str, generation: int, joiner: bool = False) -> Path:
        cfg = {"device": device, "mode": self.mode, "host": self.host, "port": self.port,
               "model": self.model.to_dict(), "steps": self.steps, "batch": self.batch, "seq": self.seq,
               "data_seed": self.data_seed, "optimizer": self.optimizer, "lr": self.lr, "out_dir": str(self.out),
               "collective_timeout_s": self.collective_timeout_s, "checkpoint_every": self.checkpoint_every,
               "checkpoint_dir": str(self.out / "checkpoints"), "generation": generation, "joiner": joiner,
               "pace_s": self.pace_s}
        return write_job(cfg, self.out, f"config-{device}-g{generation}.json")

    def _spawn(self, device: str, generation: int, joiner: bool = False) -> None:
        argv = worker_argv(WORKER, self._config(device, generation, joiner))
        self.procs[device] = self.launcher.spawn(device, argv, {"OMP_NUM_THREADS": "1", **self.env},
                                                 self.out / "logs" / f"{device}-g{generation}.log")

    def _kill(self, device: str) -> None:
        handle = self.procs.get(device)
        if handle is not None and handle.poll() is None:
            self.launcher.kill(handle)

    def _publish(self, generation: int, info: dict) -> None:
        self.store.set(f"gen/{generation}", json.dumps(info))

    # ------------------------------------------------------------------ the loop
    def run(self) -> ElasticOutcome:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        from edgepool.testbed.launcher import make_launcher

        devices = list(dict.fromkeys(self.plan.devices + [j.device for j in self.joins]))
        if isinstance(self.launcher_kind, str):
            options = self.testbed_options if self.launcher_kind == "testbed" else {}
            self.launcher = make_launcher(self.launcher_kind, self.cluster, devices, **options)
        else:  # a launcher object (the pool's): this run starts and tears it down
            self.launcher = self.launcher_kind
        with self.launcher:
            self.host = self.launcher.coordinator_address()
            with self.launcher.coordinator_namespace():  # port 0: the store picks a free one there
                self.store = dist.TCPStore(self.host, 0, is_master=True, wait_for_workers=False,
                                           timeout=_dt.timedelta(seconds=60))
            self.port = self.store.port
            self.procs: dict[str, WorkerHandle] = {}
            self.events: list[dict] = []
            self.plans = [self.plan]
            self.gen_start: dict[int, int] = {0: 0}
            self.t_start = time.time()
            try:
                for d in self.plan.devices:
                    self._spawn(d, 0)
                self._publish(0, {"plan": self.plan.model_dump(mode="json"), "devices": self.plan.devices,
                                  "committed": 0, "sources": {}, "transfers": []})
                self._supervise()
                return self._collect()
            finally:
                for d in list(self.procs):
                    self._kill(d)
                self.store = None  # close its sockets before the launcher tears down (and the testbed its hub)

    def _supervise(self) -> None:
        g, plan = 0, self.plan
        members = list(plan.devices)
        pending_fail = list(self.failures)
        pending_join = list(self.joins)
        joined_waiting: list[str] = []
        deadline = time.monotonic() + self.timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"elastic run did not finish in {self.timeout_s} s; logs in {self.out / 'logs'}")
            codes = {d: self.procs[d].poll() for d in members}
            if all(c == 0 for c in codes.values()):
                return
            dead = [d for d, c in codes.items() if c not in (None, 0)]
            for d in stale_devices(self.store, [d for d in members if d not in dead], self.heartbeat_timeout_s):
                self._kill(d)  # fence: a device we declared dead must not come back half-way
                self.events.append({"kind": "fenced", "device": d, "time": time.time()})
                dead.append(d)
            errors = [d for d in dead if (self.out / f"error-{d}.txt").exists()]
            if errors:
                raise RuntimeError(f"worker {errors[0]} failed with an error:\n"
                                   + (self.out / f"error-{errors[0]}.txt").read_text())
            started = self._started()
            # failure injection: kill -9 part-way into the iteration
            for f in list(pending_fail):
                s = started.get(f.device)
                if s and s[0] == g and s[1] >= f.step:
                    time.sleep(max(0.0, s[2] + f.fraction * self._iteration_estimate() - time.time()))
                    t = time.time()
                    self._kill(f.device)
                    in_step = self._started().get(f.device, s)[1]  # a busy host can poll late: say where it died
                    self.events.append({"kind": "failure", "device": f.device, "step": in_step,
                                        "requested_step": f.step, "time": t, "generation": g})
                    pending_fail.remove(f)
                    dead.append(f.device)
            for j in list(pending_join):  # the new device's process starts at once; it is let in from its step
                if j.device not in self.procs:
                    self._spawn(j.device, g + 1, joiner=True)
                    self.events.append({"kind": "join-start", "device": j.device, "step": j.step, "time": time.time()})
                if any(s[0] == g and s[1] >= j.step for s in started.values()):
                    pending_join.remove(j)
                    joined_waiting.append(j.device)
            if joined_waiting and not self.store.check([f"join_pending/{g}"]) and \
                    self.store.check([f"join/{d}" for d in joined_waiting]):
                self.store.set(f"join_pending/{g}", ",".join(joined_waiting))
            if dead:
                dead = sorted(set(dead))
                now = time.time()
                injected = {e["device"] for e in self.events if e["kind"] == "failure" and e["generation"] == g}
                for d in dead:  # a device lost on its own (its process, or its host's agent): when it was seen
                    if d not in injected and d in started and started[d][0] == g:
                        self.events.append({"kind": "failure", "device": d, "step": started[d][1], "time": now,
                                            "generation": g, "detected": True})
                self.events.append({"kind": "dead", "devices": dead, "time": now,
                                    "codes": {d: self.procs[d].poll() for d in dead}})
                survivors = [d for d in members if d not in dead]
                if not survivors:
                    raise RecoveryFailed("every device failed")
                g, plan, members = self._recover(g, plan, members, survivors, dead, joined_waiting)
                joined_waiting = []
                continue
            if joined_waiting and self.store.check([f"join_pending/{g}"]) and \
                    self.store.check([f"report/{g}/{d}" for d in members]):
                g, plan, members = self._rejoin(g, plan, members, joined_waiting)
                joined_waiting = []
                continue
            if self.progress:
                self.progress(self._completed_steps(), self.steps)
            time.sleep(0.005)

    def _started(self) -> dict[str, tuple[int, int, float]]:
        out = {}
        for d in list(self.procs):
            key = f"started/{d}"
            if self.store.check([key]):
                g, s, t = self.store.get(key).decode().split(":")
                out[d] = (int(g), int(s), float(t))
        return out

    def _iteration_estimate(self) -> float:
        times = self._completion_times()
        steps = sorted(times)
        gaps = [times[b] - times[a] for a, b in zip(steps, steps[1:]) if b == a + 1]
        return sum(gaps[-3:]) / len(gaps[-3:]) if gaps else 0.2

    def _completion_times(self) -> dict[int, float]:
        """step -> when its last surviving completion happened (per generation, the max over members)."""
        out: dict[int, float] = {}
        for g, plan in enumerate(self.plans):
            end = self.gen_start.get(g + 1, self.steps) if self.strategy.rolls_back else self.steps
            for s in range(self.gen_start.get(g, 0), min(end, self.steps)):
                keys = [f"tdone/{g}/{s}/{d}" for d in plan.devices]
                done = [k for k in keys if self.store.check([k])]
                if not done:
                    continue
                t = max(float(self.store.get(k)) for k in done)
                if len(done) == len(keys) or g < len(self.plans) - 1:
                    out[s] = t if self.strategy.rolls_back else max(out.get(s, 0.0), t)
        return out

    def _completed_steps(self) -> int:
        g = len(self.plans) - 1
        plan = self.plans[g]
        n = self.gen_start.get(g, 0)
        while n < self.steps and self.store.check([f"tdone/{g}/{n}/{d}" for d in plan.devices]):
            n += 1
        return n

    def _next_generation(self, g: int, old: Plan, new: Plan, resume: Resume) -> None:
        """Publish generation g+1: the members stay and move blocks (`resume.sources`), or all restart from disk."""
        self.plans.append(new)
        self.gen_start[g + 1] = resume.committed
        info = {"plan": new.model_dump(mode="json"), "devices": new.devices, "committed": resume.committed}
        if resume.restarts:
            for d in new.devices:
                self.store.delete_key(f"hb/{d}")  # the old process's last beat must not get the new one fenced
                self._spawn(d, g + 1)
            info |= {"sources": {}, "transfers": [],
                     "checkpoint": {"steps": resume.committed, "files": resume.checkpoint_files}}
        else:
            info |= {"sources": {str(b): d for b, d in resume.sources.items()},
                     "transfers": block_transfers(old, new, resume.sources, self.batch)}
        self._publish(g + 1, info)

    def _recover(self, g, plan, members, survivors, dead, joiners):
        t0 = time.time()
        resume = self.strategy.on_failure(Failure(g, plan, survivors, dead, self.batch), self)
        t_plan = time.time()
        new = self.replan(survivors)
        plan_s = time.time() - t_plan
        self._next_generation(g, plan, new, resume)
        if resume.restarts:
            self.events.append({"kind": "restart", "generation": g + 1, "from_step": resume.committed,
                                "time": time.time(), "decide_s": time.time() - t0, "devices": new.devices})
        else:
            self.events.append({"kind": "replan", "generation": g + 1, "dead": dead, "committed": resume.committed,
                                "time": time.time(), "decide_s": time.time() - t0, "plan_s": plan_s,
                                "devices": new.devices})
        return g + 1, new, list(new.devices)

    def _rejoin(self, g, plan, members, joiners):
        t0 = time.time()
        resume = self.strategy.on_join(Join(g, plan, members, joiners, self.batch), self)
        new = self.replan(members + joiners)
        self._next_generation(g, plan, new, resume)
        self.events.append({"kind": "join", "generation": g + 1, "devices": new.devices, "joined": joiners,
                            "committed": resume.committed, "time": time.time(), "decide_s": time.time() - t0})
        return g + 1, new, list(new.devices)

    # ------------------------------------------------------------------ what a recovery strategy may ask (`Workers`)
    def abort(self, generation: int, dead: list[str]) -> None:
        """Survivors leave the generation's process group (they poll this key) and report; they stay alive."""
        self.store.set(f"abort/{generation}", ",".join(dead))

    def stop_all(self, devices: list[str]) -> None:
        for d in devices:
            self._kill(d)

    def committed(self, generation: int, devices: list[str]) -> int:
        """Iterations committed, from the reports of `devices` once they left generation `generation`."""
        reports = self._reports(generation, devices)
        return max([r["done"] for r in reports.values()] + [self.gen_start.get(generation, 0)])

    def latest_checkpoint(self, devices: list[str]) -> tuple[int, list[str]]:
        return latest_checkpoint(self.out / "checkpoints", devices)

    def _reports(self, g: int, devices: list[str]) -> dict[str, dict]:
        keys = [f"report/{g}/{d}" for d in devices]
        limit = time.monotonic() + self.collective_timeout_s + 5
        while not self.store.check(keys):
            dead = [d for d in devices if self.procs[d].poll() not in (None, 0)]
            if dead:
                raise RuntimeError(f"devices {dead} failed during recovery of generation {g}")
            if time.monotonic() > limit:
                missing = [k for k in keys if not self.store.check([k])]
                raise TimeoutError(f"no recovery report from {missing}; events {self.events}")
            time.sleep(0.002)
        return {d: json.loads(self.store.get(k)) for d, k in zip(devices, keys)}

    # ------------------------------------------------------------------ results
    def _collect(self) -> ElasticOutcome:
        final = self.plans[-1]
        state = {}
        results = dict(zip(final.devices, read_results(self.out, [f"result-{d}.json" for d in final.devices])))
        for d in final.devices:
            state.update(torch.load(self.out / f"state-{d}.pt"))
        completions = self._completion_times()
        for ev in self.events:
            if ev["kind"] == "failure":
                g_next = ev["generation"] + 1
                ev["after"] = [{"step": s, "time": t} for s, t in self._gen_completions(g_next).items()]
        return ElasticOutcome(self.mode, self.out, self.plans, self.events, completions, results, state,
                              self._sample_accounting(), self.t_start, describe_launcher(self.launcher))

    def _gen_completions(self, g: int) -> dict[int, float]:
        if g >= len(self.plans):
            return {}
        out = {}
        for s in range(self.gen_start.get(g, 0), self.steps):
            keys = [f"tdone/{g}/{s}/{d}" for d in self.plans[g].devices]
            if self.store.check(keys):
                out[s] = max(float(self.store.get(k)) for k in keys)
        return out

    def _sample_accounting(self) -> dict[str, int]:
        """Samples (step, row) whose gradient is in the final weights: lost and double-counted ones.

        With pipeline replay every recorded contribution was committed, so all count; with a strategy that
        `rolls_back` (checkpoint restart) the iterations after the point a restart went back to were rolled back
        by design and do not count."""
        raw = self.store.get("rows").decode() if self.store.check(["rows"]) else ""
        seen: dict[tuple[int, int], int] = {}
        for item in filter(None, raw.split(";")):
            g, step, rows = item.split(":")
            g, step = int(g), int(step)
            if self.strategy.rolls_back and step >= self.gen_start.get(g + 1, self.steps):
                continue
            a, b = map(int, rows.split("-"))
            for r in range(a, b):
                seen[(step, r)] = seen.get((step, r), 0) + 1
        expected = self.steps * self.batch
        unique = len(seen)
        return {"expected": expected, "used": sum(seen.values()), "samples_lost": expected - unique,
                "samples_double_counted": sum(c - 1 for c in seen.values())}
