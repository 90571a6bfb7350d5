"""How a training run recovers when devices leave: a `RecoveryStrategy`, one method per phase.

In the style of Flower's `Strategy`: the supervisor (`recovery.ElasticRun`) and the elastic simulation
(`sim_events`) own the loop and call the strategy at each decision, with typed inputs and results:

- `on_failure(Failure, workers) -> Resume`: devices died; stop the interrupted generation and say where the
  next one resumes (iterations kept) and where its state comes from (survivors' memory, or checkpoint files).
  The survivors are the plan's devices minus the dead, and the next plan is the run's `replan(survivors)`.
- `on_join(Join, workers) -> Resume`: devices join at an iteration boundary; the default keeps every iteration
  and moves the joiners' blocks from the members' memory.
- `simulate_failure(SimulatedFailure) -> SimulatedRecovery`: the same recovery priced by the cost model.
- `rolls_back`: whether iterations after the resume point are computed again (and their first results dropped).

A strategy that cannot recover raises `RecoveryFailed` (a `RuntimeError`); the run ends with it, its workers
killed and their logs kept. `PipelineReplay` (Asteroid's in-memory replicas) and `CheckpointRestart` (the
baseline) are the two strategies; `recovery_strategy(name)` maps a name to one, once, at the edge.
To add one: subclass `RecoveryStrategy`, give it a `name`, implement the phases and add it to `STRATEGIES`.
The name is also the workers' mode (`worker.py`: what they keep during a generation, replicas or checkpoints).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import ClassVar, Protocol

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.elastic.handover import block_sources, state_bytes, transfer_seconds
from edgepool.errors import SpecError
from edgepool.plan import Plan
from edgepool.profile import ModelProfile


class RecoveryFailed(RuntimeError):
    """A strategy cannot recover from this failure (e.g. a block and its replica were both lost)."""


@dataclass(frozen=True)
class Failure:
    """Devices of generation `generation` (running `plan`) died; `survivors` are the plan's other devices."""
    generation: int
    plan: Plan
    survivors: list[str]
    dead: list[str]
    batch: int


@dataclass(frozen=True)
class Join:
    """`joiners` wait at the iteration boundary of generation `generation`, whose plan ran on `members`."""
    generation: int
    plan: Plan
    members: list[str]
    joiners: list[str]
    batch: int


@dataclass(frozen=True)
class Resume:
    """Where the next generation starts: `committed` iterations are kept; state comes from `sources` (block ->
    the live device holding it in memory, the workers stay) or, when `sources` is None, every worker restarts
    and loads `checkpoint_files`."""
    committed: int
    sources: dict[int, str] | None = None
    checkpoint_files: list[str] = field(default_factory=list)

    @property
    def restarts(self) -> bool:
        return self.sources is None


class Workers(Protocol):
    """What a strategy may ask of the running workers (`ElasticRun` provides it)."""

    def abort(self, generation: int, dead: list[str]) -> None:
        """Survivors leave the generation's process group and report; their state stays in memory."""

    def stop_all(self, devices: list[str]) -> None:
        """Kill these workers' processes."""

    def committed(self, generation: int, devices: list[str]) -> int:
        """Iterations committed, from the reports of `devices` once they left the generation."""

    def latest_checkpoint(self, devices: list[str]) -> tuple[int, list[str]]:
        """(iterations done, files) of the newest checkpoint all of `devices` wrote; (0, []) if none."""


@dataclass(frozen=True)
class SimulatedFailure:
    """A failure in the simulator: `step` was interrupted; `old` ran on `alive` + the dead, `new` is the re-plan."""
    step: int
    old: Plan
    new: Plan
    alive: list[str]
    profile: ModelProfile
    cluster: Cluster
    cost_model: CostModel
    detection_s: float
    plan_s: float


@dataclass(frozen=True)
class SimulatedRecovery:
    """Seconds without training, the step training resumes at, iterations to compute until back at the
    interrupted one (itself included), and the cost's parts (`detail`, seconds by name)."""
    cost_s: float
    resume_step: int
    redo: int
    detail: dict


class RecoveryStrategy(ABC):
    """One recovery technique; see the module docstring for the phases and what a failure to recover does."""
    name: ClassVar[str]
    rolls_back: ClassVar[bool] = False
    checkpoint_every: int = 5  # iterations between the workers' checkpoints (read by workers that save them)

    @abstractmethod
    def on_failure(self, failure: Failure, workers: Workers) -> Resume:
        """Stop the interrupted generation; where the next resumes and where its state comes from."""

    def on_join(self, join: Join, workers: Workers) -> Resume:
        """Every member reached the boundary: keep all iterations, hand blocks over from the members' memory."""
        return Resume(workers.committed(join.generation, join.members),
                      block_sources(join.plan, join.members, join.batch))

    @abstractmethod
    def simulate_failure(self, failure: SimulatedFailure) -> SimulatedRecovery:
        """The recovery's cost in the simulator."""


@dataclass
class PipelineReplay(RecoveryStrategy):
    """Survivors keep their state; a dead device's blocks come from its ring successor's in-memory replica,
    and the interrupted iteration is replayed on the new plan."""
    name = "replay"

    def on_failure(self, failure: Failure, workers: Workers) -> Resume:
        workers.abort(failure.generation, failure.dead)
        committed = workers.committed(failure.generation, failure.survivors)
        try:
            sources = block_sources(failure.plan, failure.survivors, failure.batch)
        except RuntimeError as exc:
            raise RecoveryFailed(str(exc)) from None
        return Resume(committed, sources)

    def simulate_failure(self, failure: SimulatedFailure) -> SimulatedRecovery:
        f = failure
        move_s = transfer_seconds(f.old, f.new, f.profile, f.cluster, f.cost_model, f.alive)
        return SimulatedRecovery(f.detection_s + f.plan_s + move_s, f.step, 1,
                                 {"detection_s": f.detection_s, "plan_s": f.plan_s, "state_transfer_s": move_s})


@dataclass
class CheckpointRestart(RecoveryStrategy):
    """The baseline: every worker checkpoints every `checkpoint_every` iterations; on a failure all are killed
    and restarted on the survivors' plan from the newest checkpoint, recomputing the iterations since.
    `restart_s` (process start, imports, process group) and `disk_bandwidth` (bytes/s) price it when simulated."""
    checkpoint_every: int = 5
    restart_s: float = 10.0
    disk_bandwidth: float = 100e6
    name: ClassVar[str] = "checkpoint"
    rolls_back: ClassVar[bool] = True

    def __post_init__(self):
        if self.checkpoint_every < 1:
            raise SpecError(field="checkpoint_every", value=self.checkpoint_every, accepted="an integer >= 1")

    def on_failure(self, failure: Failure, workers: Workers) -> Resume:
        workers.stop_all(failure.plan.devices)
        steps_done, files = workers.latest_checkpoint(failure.plan.devices)
        return Resume(steps_done, None, files)

    def simulate_failure(self, failure: SimulatedFailure) -> SimulatedRecovery:
        f = failure
        last = (f.step // self.checkpoint_every) * self.checkpoint_every
        load_s = state_bytes(f.profile, 0, len(f.profile), f.cost_model) / self.disk_bandwidth
        redo = f.step - last + 1
        return SimulatedRecovery(f.detection_s + f.plan_s + self.restart_s + load_s, last, redo,
                                 {"detection_s": f.detection_s, "plan_s": f.plan_s, "restart_s": self.restart_s,
                                  "load_s": load_s, "iterations_redone": redo - 1})


STRATEGIES: dict[str, type[RecoveryStrategy]] = {"replay": PipelineReplay, "checkpoint": CheckpointRestart}


def recovery_strategy(name: str, **options) -> RecoveryStrategy:
    """The strategy called `name`, made with those of `options` it takes (a command line offers every
    strategy's options, e.g. `checkpoint_every`, which pipeline replay has no use for); a `SpecError` listing
    the names for an unknown one."""
    if name not in STRATEGIES:
        raise SpecError(field="recovery", value=name, accepted=", ".join(STRATEGIES))
    cls = STRATEGIES[name]
    taken = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in taken})
