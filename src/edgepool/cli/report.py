"""`edgepool report gather DIR...`: the report, plan and Gantt chart of a run across real hosts."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

report_app = typer.Typer(help="Reports of runs: gather per-host results into one report.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(report_app, name="report")


@report_app.command()
def gather(
    folders: list[Path] = typer.Argument(..., help="Each host's edgepool-run/ folder (result-rank<N>.json)."),
    output: Path = typer.Option(Path("edgepool-report"), "-o", "--output", file_okay=False,
                                help="Folder for report.json, plan.json and gantt.png."),
    cluster: str = typer.Option(None, help="The cluster spec the plan was made for (for modelled energy)."),
    spec_file: Path = typer.Option(None, "--spec", help="The plan-run.json the hosts ran (default: the "
                                                        "worker-spec.json each worker copies next to its result)."),
    warmup: int = typer.Option(1, min=0, help="Leading iterations left out of the timing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Gather the results of `edgepool train --print-launch` runs into report.json, plan.json and gantt.png."""
    from edgepool.cluster import load_cluster
    from edgepool.plotting import draw_gantt
    from edgepool.runtime.gather import gather_run

    from edgepool.errors import SpecError

    from .runtime import _command, _device_table, gather_error

    try:
        gathered = gather_run(folders, load_cluster(cluster) if cluster else None, warmup, spec_file, _command())
    except SpecError as exc:
        raise gather_error(exc) from None
    report = gathered.report
    output.mkdir(parents=True, exist_ok=True)
    report.save(output / "report.json")
    gathered.plan.save(output / "plan.json")
    gantt = draw_gantt(report, output / "gantt.png", title=f"{gathered.plan.planner}: measured across hosts")
    if as_json:
        typer.echo(report.to_json())
        return
    out = Console()
    out.print(_device_table(report))
    losses = report.metrics["loss_per_step"]
    out.print(f"measured: {report.throughput:.2f} samples/s, {report.iteration_time_s:.3f} s per iteration "
              f"({report.metrics['steps'] - report.metrics['warmup_steps']} timed of {report.metrics['steps']}); "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    out.print(report.where)
    out.print(f"report, plan and Gantt chart in {output} ({gantt.name})")
