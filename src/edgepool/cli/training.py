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
        objective: str = typer.Option("throughput", help="throughput, or energy (least energy per sample)."),
        throughput_fraction: float = typer.Option(
            0.9, help="energy objective: keep at least this fraction of each planner's throughput plan."),
        min_throughput: float = typer.Option(None, help="A throughput floor in samples/s (instead)."),
        energy_budget: float = typer.Option(None, help="At most this many joules per sample."),
        power_budget: float = typer.Option(None, help="At most this average draw of the plan's devices, W."),
        pareto: Path = typer.Option(None, dir_okay=False,
                                    help="Draw throughput against energy per sample of every candidate here."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Every planner side by side: simulated throughput, energy per sample, memory headroom, feasibility.

        Jetsons carry the power work's modes (presets and their Pareto front for this model, with modelled
        draw); `--objective energy` or a budget makes each planner search them and the devices to use."""
        from edgepool.planners.compare import compare_planners
        from edgepool.power.planning_modes import with_planning_modes
        constraints = {k: v for k, v in {"min_throughput": min_throughput, "energy_per_sample_j": energy_budget,
                                         "power_w": power_budget}.items() if v is not None}
        if objective == "energy" and min_throughput is None:
            constraints["throughput_fraction"] = throughput_fraction
        try:
            cost_model = _cost_model(precision, optimizer)
            prof = _profile(model, seq)
            cl = with_planning_modes(cluster_of(cluster, pool, key, key_file), prof, batch, precision)
            rows = compare_planners(prof, cl, cost_model, batch, objective=objective, constraints=constraints)
        except SpecError as exc:
            _fail(exc)
        if pareto:
            _draw_energy_pareto(rows, pareto, f"{model} on {cl.name}, batch {batch}")
        if as_json:
            typer.echo(json.dumps({"model": model, "cluster": cl.name, "batch": batch, "objective": objective,
                                   "constraints": constraints, "source": "simulated",
                                   "energy": "modelled: catalog idle power + the power work's DVFS model",
                                   "rows": [{k: v for k, v in r.items() if k != "plan"} for r in rows]}, indent=2))
            return
        title = (f"{model} on {cl.name}, batch {batch}, objective {objective}"
                 + (f" ({', '.join(f'{k} {v:g}' for k, v in constraints.items())})" if constraints else "")
                 + " (simulated; energy modelled)")
        table = narrow_table(title, ["planner", "kind", "samples/s", "vs dp", "J/sample", "W", "slower modes"],
                             left=("kind",))
        for r in rows:
            table.add_row(r["planner"], r["parallelism"], f"{r['throughput']:.4g}" if r["feasible"] else "-",
                          f"{r['speedup_over_dp']:.2f}x" if r["speedup_over_dp"] else "-",
                          f"{r['energy_per_sample_j']:.3g}" if r["feasible"] else "-", f"{r['power_w']:.3g}",
                          str(_modes_lowered(r, cl)))
        console = Console()
        console.print(table)
        for r in rows:
            if not r["feasible"]:
                console.print(f"{r['planner']}: no plan: {r['why_not']}")
        feasible = [r for r in rows if r["feasible"]]
        if feasible:
            best = min(feasible, key=lambda r: r["energy_per_sample_j"])
            table = narrow_table(f"where the energy goes in {best['planner']}'s plan, J per sample (modelled)",
                                 ["device", "mode", "compute", "idle", "network"], left=("mode",))
            for d, parts in best["device_energy_j_per_sample"].items():
                table.add_row(d, best["power_modes"].get(d, "-"),
                              *(f"{parts[k]:.3g}" for k in ("compute", "idle", "communication")))
            console.print(table)
        if pareto:
            console.print(f"Pareto plot drawn to {pareto}")


def _modes_lowered(row: dict, cluster) -> int:
    """How many of the plan's devices run in a slower mode than their fastest."""
    return sum(1 for d, m in row["power_modes"].items() if m != cluster.power_modes.get(d))


def _draw_energy_pareto(rows: list[dict], path: Path, title: str) -> None:
    """Throughput against energy per sample of every candidate every planner's search replayed (or of each
    planner's plan, when there was no search), the front, and the plans chosen."""
    from edgepool.planners.compare import pareto_points
    from edgepool.plotting import draw_energy_pareto
    draw_energy_pareto(*pareto_points(rows), path, title=title + " (simulated)")
