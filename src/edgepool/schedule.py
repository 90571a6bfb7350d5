"""Pipeline schedules as data: the ordered passes each stage runs in one iteration, with their messages.

The one representation of a schedule: the runtime worker executes these lists (receives, passes, sends),
the simulator replays them as events, and the planners' closed form reads its in-flight counts from them,
so a schedule added here works everywhere. Every action is a forward or a backward of one micro-batch and
names the stage it receives from before it runs and the stage it sends to after: a forward receives the
activation from the previous stage (unless first) and sends its output to the next (unless last); a
backward receives the output's gradient from the next stage (unless last) and sends its input's gradient
to the previous one (unless first).

GPipe runs every micro-batch forward, then every one backward in reverse order (activations of all
micro-batches alive at once). 1F1B (PipeDream-Flush) runs `stages - stage - 1` warm-up forwards, then
alternates one forward and one backward, then drains the backwards, so a stage holds at most
`stages - stage` micro-batches of activations. Both end with a flush: gradients are complete before the
optimizer step, so results equal plain training.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal

from edgepool.errors import SpecError


@dataclass(frozen=True)
class Action:
    """One pass of one micro-batch; `recv_from` / `send_to`: the neighbouring stage it waits for / feeds."""

    kind: Literal["fwd", "bwd"]
    microbatch: int
    recv_from: int | None = None
    send_to: int | None = None

    def __str__(self) -> str:
        return f"{'F' if self.kind == 'fwd' else 'B'}{self.microbatch}"


def forward(num_stages: int, stage: int, microbatch: int) -> Action:
    """A forward pass: the activation comes from the stage before and its output goes to the stage after."""
    return Action("fwd", microbatch, recv_from=stage - 1 if stage > 0 else None,
                  send_to=stage + 1 if stage < num_stages - 1 else None)


def backward(num_stages: int, stage: int, microbatch: int) -> Action:
    """A backward pass: the output's gradient comes from the stage after (the last stage starts from its own
    loss) and its input's gradient goes to the stage before."""
    return Action("bwd", microbatch, recv_from=stage + 1 if stage < num_stages - 1 else None,
                  send_to=stage - 1 if stage > 0 else None)


# ----------------------------------------------------------------------------- the schedules
def gpipe(num_stages: int, stage: int, microbatches: int) -> list[Action]:
    return ([forward(num_stages, stage, m) for m in range(microbatches)]
            + [backward(num_stages, stage, m) for m in reversed(range(microbatches))])


def one_f_one_b(num_stages: int, stage: int, microbatches: int) -> list[Action]:
    warmup = min(num_stages - stage - 1, microbatches)
    actions = [forward(num_stages, stage, m) for m in range(warmup)]
    next_fwd, next_bwd = warmup, 0
    while next_fwd < microbatches:
        actions.append(forward(num_stages, stage, next_fwd))
        next_fwd += 1
        actions.append(backward(num_stages, stage, next_bwd))
        next_bwd += 1
    actions += [backward(num_stages, stage, m) for m in range(next_bwd, microbatches)]
    return actions


@dataclass(frozen=True)
class Schedule:
    """A schedule's action lists, and the one fact the planners' closed form cannot read off them: whether
    every stage runs all its forwards as one wave, then all its backwards as another (GPipe), so that the
    closed form times the two waves separately instead of one forward-backward period."""

    actions: Callable[[int, int, int], list[Action]]  # (num_stages, stage, microbatches) -> that stage's list
    waves: bool = False


# Adding a schedule: its function above and one entry here (`Plan.schedule` accepts every name here).
# `none` (a plan without pipelining) runs like 1F1B.
SCHEDULES: dict[str, Schedule] = {
    "1f1b": Schedule(one_f_one_b),
    "gpipe": Schedule(gpipe, waves=True),
    "none": Schedule(one_f_one_b),
}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise SpecError(field="schedule", value=name, accepted=", ".join(SCHEDULES))
    return SCHEDULES[name]


def stage_actions(schedule: str, num_stages: int, stage: int, microbatches: int) -> list[Action]:
    """The actions of one stage, in the order it runs them."""
    if num_stages < 1 or not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages}), got {stage}")
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    return get_schedule(schedule).actions(num_stages, stage, microbatches)


def in_flight(actions: list[Action]) -> int:
    """Most micro-batches whose activations a stage holds at once under these actions."""
    alive = peak = 0
    for a in actions:
        alive += 1 if a.kind == "fwd" else -1
        peak = max(peak, alive)
    return peak


@lru_cache(maxsize=4096)
def stage_in_flight(schedule: str, num_stages: int, stage: int, microbatches: int) -> int:
    """`in_flight` of one stage's action list; cached, as the planners' searches ask for the same few often."""
    return in_flight(stage_actions(schedule, num_stages, stage, microbatches))
