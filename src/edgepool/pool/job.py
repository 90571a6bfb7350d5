"""`JobReporter`: keeps the dashboard's view of one running job current.

A command that runs on the pool reports its job to the coordinator: what it is, its plan (with the plan's
timeline, which the dashboard draws as a Gantt chart), its progress and throughput, and the membership events
its runtime saw (a device lost, a re-plan). Progress is sent at most twice a second, whatever the runtime's
callback rate.
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

from edgepool.plan import Plan

TimelineFn = Callable[[Plan], list[dict]]  # a plan -> its timeline events (the simulator's, for one iteration)


class JobReporter:
    def __init__(self, client, kind: str, command: str, total: int | None, unit: str = "iterations",
                 work_per_unit: float = 1.0, work_unit: str = "samples/s", timeline: TimelineFn | None = None,
                 timeline_source: str = "simulated: one iteration of the plan (cost model)", min_interval_s=0.5,
                 clock: Callable[[], float] = time.time):
        self.client, self.total, self.unit = client, total, unit
        self.work_per_unit, self.work_unit = work_per_unit, work_unit
        self.timeline, self.timeline_source, self.min_interval_s = timeline, timeline_source, min_interval_s
        self.clock = clock
        self.started = clock()
        self._sent_at, self._done = 0.0, 0
        self._marks: list[tuple[float, int]] = []  # (time, units done) for the recent throughput
        client.report_job({"id": uuid.uuid4().hex[:8], "kind": kind, "command": command, "state": "starting",
                           "started": self.started, "progress": {"done": 0, "total": total, "unit": unit},
                           "throughput": None, "plan": None, "timeline": [], "timeline_source": timeline_source})

    def plan(self, plan: Plan) -> None:
        """A new training plan (the first, or a re-plan): its stages, and its timeline for the Gantt chart."""
        stages = [{"pipeline": p, "stage": s, "layers": list(stage.layers), "devices": list(stage.devices)}
                  for p, pipe in enumerate(plan.pipelines) for s, stage in enumerate(pipe.stages)]
        self.show_plan(plan.planner, list(plan.devices), stages, self.timeline(plan) if self.timeline else None)

    def show_plan(self, planner: str, devices: list[str], stages: list[dict], timeline: list[dict] | None) -> None:
        """Any job's plan: who holds which layers (`stages`: pipeline, stage, layers, devices) and its timeline."""
        update: dict = {"plan": {"planner": planner, "devices": devices, "stages": stages}}
        if timeline is not None:
            update["timeline"] = timeline
        self.client.report_job(update, update=True)

    def progress(self, done: int, state: str = "running", force: bool = False) -> None:
        now = self.clock()
        if done != self._done:
            self._marks = [*self._marks[-8:], (now, done)]
            self._done = done
        if not force and now - self._sent_at < self.min_interval_s:
            return
        self._sent_at = now
        self.client.report_job({"state": state, "progress": {"done": done, "total": self.total, "unit": self.unit},
                                "throughput": self._throughput()}, update=True)

    def _throughput(self) -> dict | None:
        if len(self._marks) < 2:
            return None
        (t0, d0), (t1, d1) = self._marks[0], self._marks[-1]
        if t1 <= t0:
            return None
        return {"value": (d1 - d0) * self.work_per_unit / (t1 - t0), "unit": self.work_unit,
                "over": f"the last {d1 - d0} {self.unit}, measured"}

    def event(self, kind: str, device: str | None, text: str) -> None:
        self.client.report_event(kind, device, text)

    def finish(self, state: str) -> None:
        self.progress(self._done, state=state, force=True)


def watch_serving(reporter: JobReporter, engine, stop: threading.Event, every_s: float = 1.0) -> threading.Thread:
    """Keep a serving engine's view current until `stop`: its stages (again after a re-plan), the tokens it has
    generated and the tokens/s, and each change of the pool (`PoolEvent`) as an event."""
    executor = engine.executor

    def stages() -> None:
        reporter.show_plan("llm", list(executor.devices),
                           [{"pipeline": 0, "stage": i, "layers": [s.first, s.end], "devices": [s.device]}
                            for i, s in enumerate(executor.stages)], None)

    def loop() -> None:
        stages()
        seen = 0
        while not stop.wait(every_s):
            for event in executor.events[seen:]:
                reporter.event("replan" if event.kind == "left" else "join", ", ".join(event.devices),
                               f"{', '.join(event.devices)} {event.kind}; re-planned in {event.recovery_s:.1f} s, "
                               f"now on {', '.join(s.device for s in event.stages)}")
                stages()
            seen = len(executor.events)
            reporter.progress(engine.generated_tokens, force=True)

    thread = threading.Thread(target=loop, daemon=True, name="pool-job-serving")
    thread.start()
    return thread
