"""Pipeline schedules as data: the ordered forward/backward actions each stage runs in one iteration.

GPipe runs every micro-batch forward, then every one backward in reverse order (activations of all micro-batches alive at
once). 1F1B (PipeDream-Flush) runs `stages - stage - 1` warm-up forwards, then alternates one forward and
one backward, then drains the backwards, so a stage holds at most `stages - stage` micro-batches of
activations. Both end with a flush: gradients are complete before the optimizer step, so results equal
plain training. The worker derives the P2P receives and sends from these lists; a simulator or a
fault-tolerant replay can read the same lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgepool.errors import SpecError

SCHEDULES = ("1f1b", "gpipe", "none")


@dataclass(frozen=True)
class Action:
    kind: Literal["fwd", "bwd"]
    microbatch: int

    def __str__(self) -> str:
        return f"{'F' if self.kind == 'fwd' else 'B'}{self.microbatch}"


def gpipe(num_stages: int, stage: int, microbatches: int) -> list[Action]:
    _check(num_stages, stage, microbatches)
    return ([Action("fwd", m) for m in range(microbatches)]
            + [Action("bwd", m) for m in reversed(range(microbatches))])


def one_f_one_b(num_stages: int, stage: int, microbatches: int) -> list[Action]:
    _check(num_stages, stage, microbatches)
    warmup = min(num_stages - stage - 1, microbatches)
    actions = [Action("fwd", m) for m in range(warmup)]
    next_fwd, next_bwd = warmup, 0
    while next_fwd < microbatches:
        actions.append(Action("fwd", next_fwd))
        next_fwd += 1
        actions.append(Action("bwd", next_bwd))
        next_bwd += 1
    actions += [Action("bwd", m) for m in range(next_bwd, microbatches)]
    return actions


def stage_actions(schedule: str, num_stages: int, stage: int, microbatches: int) -> list[Action]:
    """Actions of one stage; `none` (a plan without pipelining) runs like 1F1B."""
    if schedule == "gpipe":
        return gpipe(num_stages, stage, microbatches)
    if schedule in ("1f1b", "none"):
        return one_f_one_b(num_stages, stage, microbatches)
    raise SpecError(field="schedule", value=schedule, accepted=", ".join(SCHEDULES))


def in_flight(actions: list[Action]) -> int:
    """Most micro-batches whose activations a stage holds at once under these actions."""
    alive = peak = 0
    for a in actions:
        alive += 1 if a.kind == "fwd" else -1
        peak = max(peak, alive)
    return peak


def _check(num_stages: int, stage: int, microbatches: int) -> None:
    if num_stages < 1 or not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages}), got {stage}")
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
