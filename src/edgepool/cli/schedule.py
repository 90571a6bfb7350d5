"""`edgepool schedule train|eval --scenario srole|hode|recslam|moe2`: many jobs over many edge nodes."""
from __future__ import annotations

import json
from pathlib import Path

import typer

schedule_app = typer.Typer(help="Scheduling many jobs over many edge nodes: SROLE, Hode, RecSLAM and MoE² "
                                "(simulated environments over the cluster and cost model).", no_args_is_help=True)

SCENARIO_HELP = "srole, hode, recslam or moe2."


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(schedule_app, name="schedule")


def _finish(report: dict, out: Path, name: str, as_json: bool) -> None:
    """Write the report whole (atomically) and print it: JSON, or its metrics for people."""
    from edgepool.atomic import write_text_atomic
    from edgepool.benchmarking import metric_lines

    write_text_atomic(out / name, json.dumps(report, indent=1, default=str))
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    typer.echo(f"{report['scenario']}: report in {out / name}")
    for line in metric_lines(report.get("metrics", {}), 44):
        typer.echo(line)
    for label, path in report.get("plots", {}).items():
        typer.echo(f"  plot {label}: {path}")


@schedule_app.command("train")
def train_cmd(
    scenario: str = typer.Option(..., help=SCENARIO_HELP),
    seed: int = typer.Option(0, help="Training seeds start here; evaluation uses other seeds."),
    quick: bool = typer.Option(False, "--quick", help="A small run (a smoke test, not a result)."),
    out: Path = typer.Option(None, file_okay=False, help="Trained policy and report (default runs/schedule-NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Train the scenario's learned part (SROLE's agents, Hode's balancer, MoE²'s gate) and save it."""
    from edgepool.cli.progress import StageBar
    from edgepool.scheduling.scenarios import scenario_module

    module = scenario_module(scenario)
    out = out or Path(f"runs/schedule-{scenario}")
    with StageBar(as_json) as bar:
        report = module.train(out, quick=quick, seed=seed, progress=bar)
    _finish(report, out, "train.json", as_json)


@schedule_app.command("eval")
def eval_cmd(
    scenario: str = typer.Option(..., help=SCENARIO_HELP),
    trained: Path = typer.Option(None, help="A folder `schedule train` wrote; without it, training runs first."),
    seed: int = typer.Option(0, help="Training seeds start here; evaluation uses other seeds."),
    quick: bool = typer.Option(False, "--quick", help="A small run (a smoke test, not a result)."),
    out: Path = typer.Option(None, file_okay=False, help="Report and plots (default runs/schedule-NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Evaluate the scenario's policy against its baselines on held-out seeds; JSON report and plots."""
    from edgepool.cli.progress import StageBar
    from edgepool.errors import SpecError
    from edgepool.scheduling.scenarios import scenario_module

    module = scenario_module(scenario)
    if trained is not None and not trained.is_dir():
        raise SpecError("--trained", str(trained), "a folder `edgepool schedule train` wrote")
    out = out or Path(f"runs/schedule-{scenario}")
    with StageBar(as_json) as bar:
        report = module.evaluate(out, quick=quick, seed=seed, trained=trained, progress=bar)
    _finish(report, out, "report.json", as_json)
