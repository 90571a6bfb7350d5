"""One measured Report from a run across real hosts (`edgepool report gather DIR...`).

When every host runs its own worker under `torchrun` (`launch.torchrun_commands`), the worker writes
`result-rank<N>.json` (and a copy of the `worker-spec.json` it ran) into that host's `edgepool-run/`. Copy those folders to one machine;
`gather_run` checks that every rank of the plan is there exactly once and from the same run, and builds the
Report with `runner.build_report`, the same function that reports a local or testbed run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from edgepool.cluster import Cluster
from edgepool.errors import SpecError
from edgepool.plan import Plan, plan_from_dict
from edgepool.report import Report
from edgepool.runtime.layout import Layout
from edgepool.runtime.runner import build_report
from edgepool.runtime.worker import WorkerSpec

CLOCKS = ("time.time() of each worker on its own host, relative to the earliest start; hosts' clocks are not "
          "synchronized by edgepool (use NTP), so spans of different hosts may be shifted against each other")


class WorkerSpecNotFound(SpecError):
    """No worker spec at `path`: the file given as `spec_file` (`given`), or the copy beside the results."""

    def __init__(self, path: Path, given: bool):
        self.path, self.given = path, given
        super().__init__(field="spec_file" if given else "worker-spec.json", value=str(path),
                         accepted="the worker spec the hosts ran (the plan-run.json their launch commands name)",
                         hint=None if given else "give that file as spec_file")


@dataclass
class GatheredRun:
    plan: Plan
    spec: WorkerSpec
    results: list[dict]  # one per rank, in rank order
    report: Report
    files: dict[int, Path] = field(default_factory=dict)  # rank -> the result file read


def gather_run(folders: Sequence[str | Path], cluster: Cluster | None = None, warmup: int = 1,
               spec_file: str | Path | None = None, command: str = "") -> GatheredRun:
    """Read every host's results and build the measured Report (energy modelled only when `cluster` is given)."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise SpecError(field="DIR", value=[], accepted="one or more folders holding result-rank<N>.json files")
    for folder in folders:
        if not folder.is_dir():
            raise SpecError(field="DIR", value=str(folder),
                            accepted="a folder holding result-rank<N>.json (a host's edgepool-run/)")
    spec = _load_spec(folders, spec_file)
    plan = plan_from_dict(spec.plan, source="worker-spec.json plan", cluster=cluster)
    files = _result_files(folders)
    devices = plan.devices
    extra = sorted(r for r in files if r >= len(devices))
    if extra:
        raise SpecError(field="results", value=[str(files[r]) for r in extra],
                        accepted=f"ranks 0-{len(devices) - 1}: the plan has {len(devices)} devices",
                        hint="these files come from another run")
    missing = [r for r in range(len(devices)) if r not in files]
    if missing:
        raise SpecError(field="results", value=[f"rank {r} ({devices[r]})" for r in missing],
                        accepted=f"one result-rank<N>.json per device of the plan ({len(devices)})",
                        hint="copy every host's edgepool-run/ here" + _errors(folders))
    results = [json.loads(files[r].read_text()) for r in range(len(devices))]
    for rank, result in enumerate(results):
        if result.get("device") != devices[rank] or len(result.get("iteration_ends", [])) != spec.steps:
            raise SpecError(field="results", value=str(files[rank]),
                            accepted=f"the result of device {devices[rank]!r} after {spec.steps} steps",
                            hint="the file comes from another run or plan")
    hosts = {r["device"]: r.get("host", "?") for r in results}
    launcher = {"launcher": "torchrun", "hosts": hosts, "gathered_from": [str(f) for f in folders]}
    report = build_report(plan, cluster, results, Layout(plan, spec.batch).batch, warmup, launcher,
                          command=command)
    report.metrics["timeline_clock"] = CLOCKS
    return GatheredRun(plan, spec, results, report, files)


def _load_spec(folders: list[Path], spec_file: str | Path | None) -> WorkerSpec:
    candidates = [Path(spec_file)] if spec_file else [f / "worker-spec.json" for f in folders]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise WorkerSpecNotFound(candidates[0], given=bool(spec_file))
    try:
        return WorkerSpec.load(path)
    except (OSError, ValueError, TypeError) as exc:
        raise SpecError(field="spec_file", value=str(path), accepted="a worker spec JSON written by edgepool",
                        hint=str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _result_files(folders: list[Path]) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("result-rank*.json")):
            suffix = path.stem.removeprefix("result-rank")
            if not suffix.isdigit():
                continue
            rank = int(suffix)
            if rank in found and found[rank].read_bytes() != path.read_bytes():
                raise SpecError(field="results", value=[str(found[rank]), str(path)],
                                accepted="one result per rank", hint=f"two different results of rank {rank}")
            found.setdefault(rank, path)
    return found


def _errors(folders: list[Path]) -> str:
    """The last line of each error-rank<N>.txt: why a worker left no result."""
    lines = []
    for folder in folders:
        for path in sorted(folder.glob("error-rank*.txt")):
            text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
            if text:
                lines.append(f"{path.name}: {text[-1].strip()}")
    return ("; " + "; ".join(lines)) if lines else ""
