"""MkDocs hook: benchmark tables rendered from the benchmarks' stored JSON, never retyped by hand.

A page asks for a table with a marker on a line of its own (an HTML comment, so it is invisible anywhere
else):

    <!-- bench: metrics benchmarks/results/runtime/bench-runtime-2026-11-23-final.json -->

The path is relative to the folder that holds `mkdocs.yml`; the file is what `edgepool bench NAME --json`
printed (one object with `benchmark`, `metrics` and, usually, `command` and `machine`). Views:

- `metrics`: every entry of `metrics`, one row each, with the file, command and machine above the table;
- `runtime-plans`: the runtime benchmark's plans (devices, stages, rounds, median, simulated, error);
- `inference-cases`: the inference benchmark's cases x plans (measured, rounds, simulated, error).

A missing file, an unknown view or a file without `metrics` stops the build with the page and the marker,
so a moved or renamed result cannot leave a page without its table. `mkdocs serve` watches
`benchmarks/results` (see `watch:` in mkdocs.yml), so a new JSON file shows up on save.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any, Callable

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!--[ \t]*bench:[ \t]*(?P<view>[a-z-]+)[ \t]+(?P<path>\S+)[ \t]*-->[ \t]*$", re.MULTILINE)


def fmt(value: Any) -> str:
    """A figure as people read it: three significant digits, one decimal from 100 up, lists joined."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.0f}"


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction:.0%}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _source(path: str, data: dict) -> str:
    parts = [f"Rendered from `{path}`"]
    if data.get("command"):
        parts.append(f"command `{data['command']}`")
    if data.get("machine"):
        parts.append(f"machine: {data['machine']}")
    if data.get("quick"):
        parts.append("**quick run** (small sizes)")
    return "; ".join(parts) + "."


def metrics_view(path: str, data: dict) -> str:
    rows = [[f"`{key}`", fmt(value)] for key, value in data["metrics"].items()]
    text = _source(path, data) + "\n\n" + _table(["metric", "value"], rows)
    if data.get("units"):
        text += f"\n\nUnits: {data['units']}."
    return text


def runtime_plans_view(path: str, data: dict) -> str:
    metrics, rows = data["metrics"], []
    for name, plan in data["plans"].items():
        rounds = plan.get("measured_per_round") or []
        median = metrics.get(f"measured_throughput_{name}", statistics.median(rounds) if rounds else None)
        stages = " + ".join(str(n) for n in plan.get("stages", []))
        rows.append([f"`{name}`", ", ".join(plan.get("devices", [])),
                     f"stages {stages}, M = {plan.get('microbatches')}, {plan.get('schedule')}",
                     fmt(rounds), fmt(median), fmt(metrics.get(f"simulated_throughput_{name}",
                                                                   plan.get("simulated_throughput"))),
                     _pct(metrics.get(f"simulator_error_{name}", plan.get("simulator_error")))])
    header = ["plan", "devices", "layout", "measured per round", "measured (median)", "simulated",
              "simulator error"]
    return (_source(path, data) + " Throughput in samples/s.\n\n" + _table(header, rows))


def inference_cases_view(path: str, data: dict) -> str:
    rows = []
    for case, entry in data["cases"].items():
        for name, plan in entry["plans"].items():
            candidate = plan.get("candidate", "")
            if plan.get("measured_as"):
                candidate += f" (same plan as {plan['measured_as']})"
            rows.append([case, name, candidate, _ms(plan.get("measured_latency_s")),
                         ", ".join(_ms(s) for s in plan.get("measured_rounds_s") or []),
                         _ms(plan.get("simulated_latency_s")), _pct(plan.get("simulator_error"))])
    header = ["case", "plan", "candidate", "measured ms (median of rounds)", "rounds ms", "simulated ms",
              "sim. error"]
    return _source(path, data) + "\n\n" + _table(header, rows)


def energy_scenarios_view(path: str, data: dict) -> str:
    """Per scenario: the throughput plan and the energy plan (simulated), then energy per sample by kind of
    parallelism (each kind's fastest plan and its energy plan)."""
    rows, kinds = [], []
    for s in data["scenarios"]:
        t, e = s["throughput_plan"], s["energy_plan"]
        rows.append([s["scenario"], f"{t['planner']}, {len(t['devices'])} dev., {fmt(t['throughput'])}/s",
                     fmt(t["energy_per_sample_j"]), f"{e['planner']}, {len(e['devices'])} dev., "
                     f"{fmt(e['throughput'])}/s", fmt(e["energy_per_sample_j"]), _pct(s["saving"]),
                     _pct(s["throughput_kept"])])
        kinds.append([s["scenario"], *(f"{fmt(k['throughput_plan_j_per_sample'])} / "
                                       f"{fmt(k['energy_plan_j_per_sample'])}" if k else "—"
                                       for k in (s["parallelism"].get(n) for n in ("data", "pipeline", "hybrid")))])
    scalar = [[f"`{k}`", fmt(v)] for k, v in data["metrics"].items() if not isinstance(v, dict)]
    return (_source(path, data) + "\n\n" + _table(["metric", "value"], scalar) + "\n\n"
            + _table(["scenario", "throughput plan", "J/sample", "energy plan", "J/sample", "saving",
                      "throughput kept"], rows)
            + "\n\nEnergy per sample (J) of each kind's fastest plan / of its energy plan "
              "(`parallelism_energy_table` holds the first):\n\n"
            + _table(["scenario", "data", "pipeline", "hybrid"], kinds))


VIEWS: dict[str, Callable[[str, dict], str]] = {
    "metrics": metrics_view,
    "energy-scenarios": energy_scenarios_view,
    "runtime-plans": runtime_plans_view,
    "inference-cases": inference_cases_view,
}


def render(markdown: str, root: Path, where: str) -> str:
    """Replace every marker in `markdown` by its table; `root` is the folder of mkdocs.yml."""
    def one(match: re.Match) -> str:
        view, rel = match["view"], match["path"]
        if view not in VIEWS:
            raise PluginError(f"{where}: unknown benchmark view {view!r} in {match[0]!r}; "
                              f"accepted: {', '.join(VIEWS)}")
        file = (root / rel).resolve()
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise PluginError(f"{where}: cannot read benchmark results {rel!r} ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise PluginError(f"{where}: {rel!r} has no `metrics` object (not `edgepool bench NAME --json` output)")
        try:
            return VIEWS[view](rel, data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise PluginError(f"{where}: {rel!r} does not have what view {view!r} reads ({exc!r})") from exc

    # markers inside fenced code blocks (a guide showing the syntax) are left as they are
    parts, fence, out = re.split(r"(^[ \t]*(?:```|~~~).*$)", markdown, flags=re.MULTILINE), None, []
    for part in parts:
        if re.match(r"^[ \t]*(```|~~~)", part):
            mark = part.strip()[:3]
            fence = None if fence == mark else (fence or mark)
            out.append(part)
        else:
            out.append(part if fence else MARKER.sub(one, part))
    return "".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook signature
    return render(markdown, Path(config.config_file_path).resolve().parent, page.file.src_uri)
