"""Training planners and the simulator on the command line: `plan`, `simulate`, `compare`."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgepool.cli.pool import KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, cluster_of
from edgepool.cli.tables import narrow_table
from edgepool.errors import SpecError

CLUSTER_HELP = "Cluster YAML file or a shipped example (home, jetson-lab, site64); or --pool."


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _profile(model: str, seq: int | None):
    from edgepool.models import build_model
    from edgepool.profile import profile_model
    return profile_model(build_model(model, meta=True), batch=1, seq=seq)


def _cost_model(precision: str, optimizer: str):
    from edgepool.costmodel import CostModel
    try:
        return CostModel(precision=precision, optimizer=optimizer)
    except ValueError as exc:
        raise SpecError(field="--precision/--optimizer", value=f"{precision}/{optimizer}",
                        accepted=str(exc).split("accepted: ")[-1]) from None


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        cluster: str = typer.Option(None, help=CLUSTER_HELP),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(..., help="A zoo model name (see `edgepool profile --help`)."),
        batch: int = typer.Option(..., min=1, help="Samples per training iteration."),
        planner: str = typer.Option("hybrid", help="dp, dp-proportional, gpipe, pipedream, hybrid, dmp."),
        seq: int = typer.Option(None, min=1, help="Sequence length for language models."),
        precision: str = typer.Option("fp32"),
        optimizer: str = typer.Option("adam"),
        as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
        output: Path = typer.Option(None, "-o", "--output", dir_okay=False, help="Write the plan JSON here."),
    ) -> None:
        """Plan training of MODEL on CLUSTER or the pool (the planner's own estimate is in `predicted`)."""
        from edgepool.planners import get_planner
        try:
            planner_obj = get_planner(planner)
            cl = cluster_of(cluster, pool, key, key_file)
            cost_model = _cost_model(precision, optimizer)
            prof = _profile(model, seq)
            result = planner_obj.plan(prof, cl, cost_model, batch)
        except SpecError as exc:
            _fail(exc)
        if output:
            result.save(output)
        if as_json:
            typer.echo(result.to_json())
            return
        console = Console()
        table = narrow_table(f"{planner} plan: {model} on {cl.name}, batch {batch}, {result.microbatches} "
                             f"micro-batches ({result.schedule})",
                             ["pipeline", "stage", "layers", "devices (share of each micro-batch)"],
                             left=("stage", "layers", "devices (share of each micro-batch)"))
        for p, pipe in enumerate(result.pipelines):
            for s, stage in enumerate(pipe.stages):
                table.add_row(f"{p} ({pipe.batch_share:.0%} of batch)" if s == 0 else "", str(s),
                              f"{stage.layers[0]}-{stage.layers[1] - 1}",
                              ", ".join(f"{d} ({w:.0%})" for d, w in zip(stage.devices, stage.shares)))
        console.print(table)
        if result.feasible:
            pr = result.predicted
            console.print(f"predicted (cost model): {pr['throughput']:.2f} samples/s, iteration "
                          f"{pr['iteration_time_s']:.3f} s, memory headroom {pr['memory_headroom']:.0%}")
        else:
            console.print(f"[red]infeasible:[/red] {result.infeasible_reason}")
        if output:
            console.print(f"plan written to {output}")

    @app.command()
    def simulate(
        plan_file: Path = typer.Argument(..., help="A plan JSON from `edgepool plan -o`."),
        cluster: str = typer.Option(None, help="The cluster the plan was made for; or --pool."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        other_cluster: bool = typer.Option(False, "--other-cluster",
                                           help="Accept a plan made for a cluster of another name (same devices)."),
        precision: str = typer.Option(None, help="Default: the plan's precision."),
        optimizer: str = typer.Option("adam"),
        gantt: Path = typer.Option(None, "--gantt", dir_okay=False,
                                   help="Draw the timeline (one row per device) to this PNG."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        output: Path = typer.Option(None, "-o", "--output", dir_okay=False, help="Write the report JSON here."),
    ) -> None:
        """Replay one iteration of a plan micro-batch by micro-batch (simulated, not measured)."""
        from edgepool.plan import load_plan
        from edgepool.simulator import simulate as run_simulation
        try:
            cl = cluster_of(cluster, pool, key, key_file)
            the_plan = load_plan(plan_file, cluster=cl, other_cluster=other_cluster)
            cost_model = _cost_model(precision or the_plan.precision, optimizer)
            prof = _profile(the_plan.model, the_plan.seq)
            report = run_simulation(the_plan, cl, cost_model, prof)
        except SpecError as exc:
            _fail(exc)
        if output:
            report.save(output)
        if gantt:
            from edgepool.plotting import draw_gantt
            draw_gantt(report, gantt)
        if as_json:
            typer.echo(report.to_json())
            return
        console = Console()
        if report.feasible:
            console.print(f"simulated: {report.throughput:.2f} samples/s, iteration {report.iteration_time_s:.3f} s "
                          f"(plan predicted {the_plan.predicted.get('throughput', float('nan')):.2f} samples/s)")
        else:
            console.print(f"[red]infeasible:[/red] {report.infeasible_reason}")
        table = narrow_table("per device (energy modelled, per iteration)",
                             ["device", "busy s", "busy %", "peak memory GiB", "limit GiB", "energy J"])
        for d, st in report.per_device.items():
            table.add_row(d, f"{st.busy_s:.3f}", f"{st.utilization:.0%}", f"{st.peak_memory_bytes / 2**30:.2f}",
                          f"{(st.memory_limit_bytes or 0) / 2**30:.1f}", f"{st.energy_j:.1f}")
        console.print(table)
        if gantt:
            console.print(f"timeline drawn to {gantt}")

    @app.command()
    def compare(
        cluster: str = typer.Option(None, help=CLUSTER_HELP),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(...),
        batch: int = typer.Option(..., min=1),
        seq: int = typer.Option(None, min=1),
        precision: str = typer.Option("fp32"),
        optimizer: str = typer.Option("adam"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Every planner side by side: simulated throughput, speed-up over dp, memory headroom, feasibility."""
        try:
            cl = cluster_of(cluster, pool, key, key_file)
            cost_model = _cost_model(precision, optimizer)
            prof = _profile(model, seq)
            from edgepool.planners.compare import compare_planners
            rows = compare_planners(prof, cl, cost_model, batch)
        except SpecError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps({"model": model, "cluster": cl.name, "batch": batch, "source": "simulated",
                                   "rows": [{k: v for k, v in r.items() if k != "plan"} for r in rows]}, indent=2))
            return
        table = narrow_table(f"{model} on {cl.name}, batch {batch} (simulated with the roofline cost model)",
                             ["planner", "samples/s", "vs dp", "stages", "devices", "M", "free", "fits"],
                             left=("fits",))
        for r in rows:
            table.add_row(r["planner"], f"{r['throughput']:.2f}" if r["throughput"] else "-",
                          f"{r['speedup_over_dp']:.2f}x" if r["speedup_over_dp"] else "-",
                          "+".join(map(str, r["stages"])), str(r["devices_used"]), str(r["microbatches"]),
                          f"{r['memory_headroom']:.0%}" if r["memory_headroom"] is not None else "-",
                          "yes" if r["feasible"] else f"no: {r['why_not']}")
        Console().print(table)
