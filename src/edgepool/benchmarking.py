"""Finds benchmark modules under the repository's `benchmarks/` folder.

A benchmark module defines `run(quick: bool = False, progress: bool = True) -> dict` returning
`{"benchmark": NAME, "metrics": {...}, ...}` computed in that run, and optionally
`render(result) -> str` for people.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from pathlib import Path
from types import ModuleType

from edgepool.errors import SpecError


def output_folder(name: str) -> Path:
    """Where benchmark NAME writes its JSON and plots: $EDGEPOOL_BENCH_OUT, else runs/bench-NAME (created)."""
    folder = Path(os.environ.get("EDGEPOOL_BENCH_OUT", f"runs/bench-{name}"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_result(result: dict, folder: Path) -> Path:
    """The run's whole result as `folder/NAME.json`, beside its plots."""
    path = folder / f"{result['benchmark']}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return path


def run_facts(name: str, quick: bool, started: float) -> dict:
    """Where and how a benchmark ran, for its result: the machine, the wall seconds since `started`
    (`time.perf_counter()`), the command that reruns it."""
    import torch

    return {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__})",
            "seconds": round(time.perf_counter() - started, 1),
            "command": f"edgepool bench {name}" + (" --quick" if quick else "") + " --json"}


def goals_met(metrics: dict, goals: dict[str, tuple[str, float]]) -> dict[str, bool | None]:
    """Each of an issue's goals (metric -> ("at most" | "at least", bound)) judged on a run's figure; None
    where the run did not produce it. Goals are reported beside the figures, never used to tune."""
    verdict = {}
    for name, (sense, bound) in goals.items():
        value = metrics.get(name)
        verdict[name] = None if value is None else (value <= bound if sense == "at most" else value >= bound)
    return verdict


def metric_lines(metrics: dict, width: int) -> list[str]:
    """One line per metric for `render`: its name padded to `width`, the value rounded to 4 places."""
    return [f"  {key:{width}s} {value if value is None else round(value, 4)}" for key, value in metrics.items()]


def benchmark_dirs() -> list[Path]:
    """Where benchmarks live: $EDGEPOOL_BENCHMARKS, ./benchmarks, then the source checkout's."""
    dirs = []
    if os.environ.get("EDGEPOOL_BENCHMARKS"):
        dirs.append(Path(os.environ["EDGEPOOL_BENCHMARKS"]))
    dirs.append(Path.cwd() / "benchmarks")
    dirs.append(Path(__file__).resolve().parents[2] / "benchmarks")
    return [d for d in dirs if d.is_dir()]


def available_benchmarks() -> list[str]:
    names: set[str] = set()
    for d in benchmark_dirs():
        names.update(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))
    return sorted(names)


def load_benchmark(name: str) -> ModuleType:
    for d in benchmark_dirs():
        path = d / f"{name}.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"edgepool_benchmark_{name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SpecError(
        field="benchmark", value=name, accepted=", ".join(available_benchmarks()) or "(none found)",
        hint="benchmarks are read from ./benchmarks or $EDGEPOOL_BENCHMARKS",
    )
