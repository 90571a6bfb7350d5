"""`edgepool characterize`: measure the training input pipeline's knobs on this machine, with tables, plots
and what to set."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic


def register(app: typer.Typer) -> None:
    """Add the `characterize` command to the top-level app."""
    app.command("characterize")(characterize_cmd)


def characterize_cmd(
    quick: bool = typer.Option(False, "--quick",
                               help="The short sweep: 3 rounds of 30 steps per setting, about 4 minutes on 2 cores."),
    out: Path = typer.Option(Path("runs/characterize"), "--out", file_okay=False,
                             help="Folder for characterize.json, the plots and the PNG data set."),
    axes: str = typer.Option("", "--axes", help="Comma-separated axes to sweep (default all): workers, "
                             "prefetch, pin_memory, batch, storage, cache, power, runtime, combined."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as one JSON object."),
) -> None:
    """Sweep DataLoader workers, prefetch, pinned memory, batch size, storage, page cache, emulated power modes
    and isolated runtimes over a real PNG pipeline; measure fetch stall, compute, CPU use and variability."""
    from edgepool.characterize import build_plan, characterize
    from edgepool.characterize.plots import draw_iteration_times, draw_stall_compute
    from edgepool.cli.progress import StageBar

    plan = build_plan("quick" if quick else "full")
    if axes:
        plan = plan.only([a.strip() for a in axes.split(",") if a.strip()])  # SpecError on an unknown axis
    if out.exists() and not out.is_dir():
        raise FileExistsError(17, "exists and is not a folder; give a folder for --out", str(out))
    with StageBar(quiet=as_json) as bar:
        result = characterize(plan, workdir=out, progress=bar)
    data = result.to_dict()
    write_text_atomic(out / "characterize.json", json.dumps(data, indent=1))
    title = f"{result.machine}, plan {result.plan}"
    draw_stall_compute(result.rows, out / "stall-compute.png", title=f"time per sample: {title}")
    draw_iteration_times(result.rows, out / "iteration-times.png", title=f"iteration times: {title}")
    if as_json:
        typer.echo(json.dumps(data))
        return
    _print_table(result)
    for axis, reason in result.skipped.items():
        typer.echo(textwrap.fill(f"skipped {axis}: {reason}", 80, subsequent_indent="  "))
    typer.echo("what to set:")
    for line in result.recommendation:
        typer.echo(textwrap.fill(line, 80, initial_indent="  - ", subsequent_indent="    "))
    typer.echo(f"measured on {result.machine} in {result.wall_s:.0f} s")
    typer.echo(f"wrote {out / 'characterize.json'}, {out / 'stall-compute.png'}, {out / 'iteration-times.png'}")


def _print_table(result) -> None:
    from rich.console import Console

    from edgepool.cli.tables import narrow_table

    table = narrow_table(f"input pipeline, measured ({result.plan})",
                         ["setting", "samples/s", "iter ms", "stall", "CV", "CPU", "others"])
    for r in result.rows:
        mark = " *" if r is result.best or r.label == result.best.label else ""
        table.add_row(r.label + mark, f"{r.samples_per_s:.0f}", f"{r.mean_iteration_s * 1e3:.1f}",
                      f"{r.stall_fraction:.0%}", f"{r.iteration_time_cv:.2f}", f"{r.cpu_utilization:.0%}",
                      f"{r.other_load_cores:.1f}")
    console = Console()
    console.print(table)
    console.print("stall = fetch stall / iteration time; CV = std/mean of iteration times; CPU = this run's "
                  "processes over the cores it may use; others = cores other processes kept busy; * = best "
                  "(most samples/s)", soft_wrap=False)
