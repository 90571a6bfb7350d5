"""`Plan`: a planner's decision as versioned JSON. A planner never executes; a runtime never decides.

A training plan is one or more pipelines (several only for data parallelism across clusters, DMP-style),
each an ordered list of stages; a stage is a contiguous layer range served by a group of devices that split
each micro-batch by `shares` (data parallel inside the stage), or, for inference, split the layer's heads and
columns by `shares` (`parallel: tensor`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgepool.atomic import write_text_atomic
from edgepool.errors import SpecError
from edgepool.schedule import SCHEDULES

PLAN_VERSION = 1


class _FieldError(ValueError):
    """A whole-plan check that knows which field is wrong (pydantic would report it at the plan's top level)."""

    def __init__(self, field: str, value: object, message: str):
        self.field, self.value = field, value
        super().__init__(message)


class StagePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: tuple[int, int] = Field(description="[start, end) block indices")
    devices: list[str] = Field(min_length=1)
    shares: list[float] = Field(description="fraction of each micro-batch (or of heads/columns) per device")
    parallel: Literal["data", "tensor", "sequence", "tensor+sequence"] = "data"

    @model_validator(mode="after")
    def _check(self) -> "StagePlan":
        start, end = self.layers
        if start < 0 or end <= start:
            raise ValueError(f"layers must be [start, end) with 0 <= start < end, got {list(self.layers)}")
        if len(self.shares) != len(self.devices):
            raise ValueError(f"shares has {len(self.shares)} entries but devices has {len(self.devices)}")
        if any(s < 0 for s in self.shares) or not math.isclose(sum(self.shares), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must be >= 0 and sum to 1, got {self.shares}")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"a device appears twice in one stage: {self.devices}")
        return self


class PipelinePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[StagePlan] = Field(min_length=1)
    batch_share: float = Field(default=1.0, gt=0, le=1)

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = PLAN_VERSION
    kind: Literal["training", "inference"] = "training"
    planner: str
    model: str
    cluster: str
    num_layers: int = Field(gt=0)
    batch: int = Field(gt=0, description="samples per iteration (training) or per request (inference)")
    microbatches: int = Field(default=1, gt=0)
    schedule: str = Field(default="1f1b", description="a name in edgepool.schedule.SCHEDULES")
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    seq: int | None = None
    pipelines: list[PipelinePlan] = Field(min_length=1)
    feasible: bool = True
    infeasible_reason: str | None = None
    predicted: dict[str, float] = Field(default_factory=dict, description="the planner's own cost-model estimate")
    power_modes: dict[str, str] = Field(default_factory=dict,
                                        description="device -> the power mode it runs in (absent: its maximum)")
    notes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "Plan":
        if self.version != PLAN_VERSION:
            raise _FieldError("version", self.version, str(PLAN_VERSION))
        if self.schedule not in SCHEDULES:  # a schedule registered there is accepted here, no second list
            raise _FieldError("schedule", self.schedule, ", ".join(SCHEDULES))
        shares = [p.batch_share for p in self.pipelines]
        if not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
            raise _FieldError("pipelines.batch_share", shares, "batch shares that sum to 1")
        used: set[str] = set()
        for i, pipe in enumerate(self.pipelines):
            expected = 0
            for s, stage in enumerate(pipe.stages):
                if stage.layers[0] != expected:
                    raise _FieldError(f"pipelines[{i}].stages[{s}].layers", list(stage.layers),
                                      f"a range starting at {expected}: stages cover the layers contiguously from 0")
                expected = stage.layers[1]
            if expected != self.num_layers:
                raise _FieldError(f"pipelines[{i}].stages[{len(pipe.stages) - 1}].layers",
                                  list(pipe.stages[-1].layers),
                                  f"a range ending at num_layers = {self.num_layers}: the last stage ends the model")
            for s, stage in enumerate(pipe.stages):
                for d in stage.devices:
                    if d in used:
                        raise _FieldError(f"pipelines[{i}].stages[{s}].devices", d,
                                          "a device used by no other stage or pipeline")
                    used.add(d)
        if not self.feasible and not self.infeasible_reason:
            raise _FieldError("infeasible_reason", self.infeasible_reason, "a reason, since feasible is false")
        return self

    @property
    def devices(self) -> list[str]:
        return [d for p in self.pipelines for d in p.devices]

    @property
    def stages(self) -> list[StagePlan]:
        """The stages of the first (usually only) pipeline."""
        return self.pipelines[0].stages

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees half a plan."""
        write_text_atomic(path, self.to_json())


def base_cluster_name(name: str) -> str:
    """'home' for 'home', 'home (emulated here)' and 'home[3]': plans made for a cluster as emulated or in part."""
    return re.sub(r"(\[\d+\]| \(emulated here\))+$", "", name)


def plan_from_dict(raw: Any, source: str = "<plan>", cluster=None, num_layers: int | None = None,
                   model: str | None = None, other_cluster: bool = False) -> Plan:
    """Validate a plan; with a cluster / layer count / model name, also reject a plan made for another.

    `other_cluster=True` accepts a plan made for a cluster of another name if all its devices are in `cluster`
    (a renamed or edited copy of the spec).
    """
    if not isinstance(raw, dict):
        raise SpecError(field="(top level)", value=type(raw).__name__, source=source, accepted="a JSON object")
    if "version" in raw and raw["version"] != PLAN_VERSION:
        raise SpecError(field="version", value=raw["version"], source=source, accepted=str(PLAN_VERSION),
                        hint="re-run `edgepool plan` with this edgepool")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            raise SpecError(field=cause.field, value=cause.value, source=source, accepted=str(cause)) from None
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = None if err["type"] == "missing" else err.get("input") if err["loc"] else type(raw).__name__
        accepted = "the field is required" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
        raise SpecError(field=loc, value=value, source=source, accepted=accepted) from None
    if cluster is not None and not other_cluster and base_cluster_name(plan.cluster) != cluster.name:
        raise SpecError(field="cluster", value=plan.cluster, source=source, accepted=repr(cluster.name),
                        hint=f"the plan was made for another cluster; re-plan with --cluster {cluster.name}, "
                             "or pass --other-cluster to run it here anyway")
    if cluster is not None:
        for d in plan.devices:
            if d not in cluster.devices:
                raise SpecError(field="pipelines.stages.devices", value=d, source=source,
                                accepted=f"devices of cluster {cluster.name!r}: {', '.join(cluster.devices)}",
                                hint="the plan was made for another cluster")
    if num_layers is not None and plan.num_layers != num_layers:
        raise SpecError(field="num_layers", value=plan.num_layers, source=source, accepted=str(num_layers),
                        hint="the plan was made for another model")
    if model is not None and plan.model != model:
        raise SpecError(field="model", value=plan.model, source=source, accepted=model)
    return plan


def load_plan(path: str | Path, cluster=None, num_layers: int | None = None, model: str | None = None,
              other_cluster: bool = False) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise SpecError(field="plan", value=str(path), accepted="an existing plan JSON file (from `edgepool plan -o`)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(field="(JSON syntax)", value=f"line {exc.lineno}, column {exc.colno}: {exc.msg}",
                        source=str(path), accepted="valid JSON") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(field="plan", value=str(path), accepted="a readable plan JSON file",
                        hint=str(exc)) from None
    return plan_from_dict(raw, str(path), cluster=cluster, num_layers=num_layers, model=model,
                          other_cluster=other_cluster)
