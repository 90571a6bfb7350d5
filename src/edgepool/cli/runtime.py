"""Runtime commands: `edgepool train` (run a plan for real), and the tables and charts `edgepool demo` shares."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgepool.atomic import write_text_atomic
from edgepool.cli.pool import (KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, one_of, open_pool, seconds_or_never,
                               train_on_pool)
from edgepool.cli.tables import narrow_table
from edgepool.errors import SpecError


def as_flags(exc: SpecError, flags: dict[str, str], accepted: str | None = None,
             hint: str | None = None) -> SpecError:
    """The same error in the command line's words: `flags` maps the library's parameter names (which name no
    flag) to the flags that set them; `accepted`/`hint` replace the library's where the command knows better."""
    return SpecError(field=flags.get(exc.field, exc.field), value=exc.value, accepted=accepted or exc.accepted,
                     source=exc.source, hint=hint or exc.hint)


def gather_error(exc: SpecError) -> SpecError:
    """`report gather`'s error: the worker spec is the plan-run.json that `train --print-launch` wrote."""
    from edgepool.runtime.gather import WorkerSpecNotFound

    if isinstance(exc, WorkerSpecNotFound):
        return as_flags(exc, {"spec_file": "--spec"},
                        accepted="the worker spec the hosts ran (plan-run.json from `edgepool train --print-launch`)",
                        hint="pass it with --spec plan-run.json")
    return as_flags(exc, {"spec_file": "--spec"})


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(field="--override", value=pair, accepted="KEY=VALUE, e.g. n_layer=2")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class _Bar:
    """A rich progress bar per iteration of one run (stderr, so --json output stays clean)."""

    def __init__(self, console: Console, label: str, enabled: bool = True):
        self.console, self.label, self.enabled = console, label, enabled
        self.progress = self.task = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("iterations"), TimeElapsedColumn(), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _comparison_table(title: str, rows: list[dict]) -> Table:
    table = narrow_table(title, ["planner", "stages", "devices", "M", "simulated samples/s", "measured samples/s",
                                 "error"], left=("devices",))
    for r in rows:
        measured = r.get("measured_throughput")
        error = r.get("simulator_error")
        table.add_row(r["planner"], "+".join(map(str, r["stages"])), ", ".join(r["devices"]), str(r["microbatches"]),
                      f"{r['simulated_throughput']:.2f}" if r["simulated_throughput"] else "-",
                      f"{measured:.2f}" if measured else "-", f"{error:.0%}" if error is not None else "-")
    return table


def _device_table(report) -> Table:
    table = narrow_table(f"measured per device ({report.planner}), per iteration",
                         ["device", "busy s", "busy %", "peak RSS MiB", "limit GiB", "energy J (modelled)"])
    for name, s in report.per_device.items():
        table.add_row(name, f"{s.busy_s:.3f}", f"{s.utilization:.0%}", f"{s.peak_memory_bytes / 2**20:.0f}",
                      f"{s.memory_limit_bytes / 2**30:.1f}" if s.memory_limit_bytes else "-", f"{s.energy_j:.2f}")
    return table


def _gantt(reports, path: Path, title: str) -> Path:
    from edgepool.plotting import draw_gantt

    return draw_gantt(reports, path, title=title)


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        cluster: str = typer.Option(None, help="Cluster YAML file or a shipped example (home, jetson-lab, site64)."),
        model: str = typer.Option(..., help="A zoo model name (see `edgepool profile --help`)."),
        planner: str = typer.Option("hybrid", help="dp, dp-proportional, gpipe, pipedream, hybrid, dmp."),
        steps: int = typer.Option(5, min=1, help="Training iterations to run (the first is warm-up, untimed)."),
        launcher: str = typer.Option("testbed", help="local (plain processes) or testbed (emulated cluster; "
                                                     "falls back to local without root)."),
        batch: int = typer.Option(8, min=1, help="Samples per iteration."),
        seq: int = typer.Option(None, min=1, help="Sequence length for language models."),
        override: list[str] = typer.Option(None, "--override", help="Model config KEY=VALUE (repeatable)."),
        plan_file: Path = typer.Option(None, "--plan", help="Run this plan JSON instead of planning."),
        other_cluster: bool = typer.Option(False, "--other-cluster",
                                           help="With --plan: accept a plan made for a cluster of another name."),
        lr: float = typer.Option(0.01, help="SGD learning rate."),
        output: Path = typer.Option(None, "-o", "--output", file_okay=False,
                                    help="Folder for report.json, plan.json, gantt.png."),
        as_json: bool = typer.Option(False, "--json", help="Print the measured report as JSON."),
        print_launch: bool = typer.Option(False, "--print-launch",
                                          help="Print the torchrun command per host instead of running here."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP + " Runs through the agents, elastically: a "
                                                      "device that leaves is recovered from (pipeline replay)."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        heartbeat_timeout: float = typer.Option(3.0, min=0.5, help="With --pool: seconds without a worker's "
                                                                   "heartbeat before its device counts as lost."),
    ) -> None:
        """Plan and run training for real (one process per device, torch.distributed/gloo); report measured figures."""
        from edgepool.cluster import load_cluster
        from edgepool.runtime.data import ModelSpec

        console = Console(stderr=True)
        model_spec = ModelSpec(name=model, overrides=_overrides(override))
        one_of(cluster, pool)
        if pool is not None:
            _train_on_pool(pool, key, key_file, model_spec, planner, steps, batch, seq, lr, output,
                           heartbeat_timeout, as_json, console)
            return
        spec = load_cluster(cluster)
        if print_launch:
            _print_launch(spec, model_spec, planner, plan_file, batch, seq, steps, lr, output, other_cluster)
            return
        try:
            outcome, comparison = _run(spec, model_spec, planner, plan_file, other_cluster, launcher, batch, seq,
                                       lr, steps, output, console)
        except SpecError as exc:
            if exc.field != "launcher":
                raise
            raise as_flags(exc, {"launcher": "--launcher"}, hint="for real hosts print the torchrun commands with "
                                                                   "`edgepool train --print-launch`") from None
        report = outcome.report
        comparison.plan.save(outcome.run_dir / "plan.json")
        gantt = _gantt([comparison.simulated, report], outcome.run_dir / "gantt.png",
                       f"{comparison.planner}: simulated (left) vs measured (right)")
        if as_json:
            typer.echo(report.to_json())
            return
        out = Console()
        out.print(_comparison_table(f"{model} on {spec.name} ({report.metrics['launcher'].get('launcher')})",
                                    [comparison.summary()]))
        out.print(_device_table(report))
        out.print(f"measured: {report.throughput:.2f} samples/s, {report.iteration_time_s:.3f} s per iteration "
                  f"({report.metrics['steps'] - report.metrics['warmup_steps']} timed of {report.metrics['steps']}); "
                  f"loss {report.metrics['loss_per_step'][0]:.4f} -> {report.metrics['loss_per_step'][-1]:.4f}")
        out.print(f"{report.where}")
        out.print(f"report, plan and Gantt chart in {outcome.run_dir} ({gantt.name})")


def _train_on_pool(pool, key, key_file, model_spec, planner, steps, batch, seq, lr, output, heartbeat_timeout,
                   as_json, console) -> None:
    from edgepool.pool.key import resolve_key

    secret = resolve_key(key, key_file)
    with open_pool(pool, key, key_file) as client:
        result = train_on_pool(client, secret, model_spec, planner, steps, batch, seq, lr, output,
                               heartbeat_timeout, _command(), console)
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    out = Console()
    out.print(f"plans: {' -> '.join('+'.join(p) for p in result['plans'])} (pool {result['pool']})")
    if result["samples_per_s"]:
        out.print(f"measured: {result['samples_per_s']:.2f} samples/s ({result['samples_per_s_over']})")
    for r in result["recoveries"]:
        out.print(f"{r['device']} lost in iteration {r['step']}: interrupted iteration done again after "
                  f"{seconds_or_never(r['time_to_interrupted_iteration_s'])} (pipeline replay)")
    out.print(f"samples lost {result['samples']['samples_lost']}, double-counted "
              f"{result['samples']['samples_double_counted']}; run folder {result['run_dir']}")


def _run(spec, model_spec, planner: str, plan_file: Path | None, other_cluster: bool, launcher: str, batch: int,
         seq: int | None, lr: float, steps: int, output: Path | None, console: Console):
    """`train`'s run: plan (or load `plan_file`), simulate, run for real; (outcome, comparison)."""
    from edgepool.plan import load_plan
    from edgepool.runtime.experiment import Comparison, Experiment

    with Experiment(spec, model_spec, batch=batch, seq=seq, launcher_kind=launcher, lr=lr) as exp:
        if plan_file is not None:
            plan = load_plan(plan_file, cluster=spec, num_layers=len(exp.profile), other_cluster=other_cluster)
            comparison = Comparison(plan.planner, plan, exp.simulate(plan))
        else:
            comparison = exp.compare(planner)
        if not comparison.plan.feasible:
            raise SpecError(field="planner", value=planner, accepted="a planner that finds a feasible plan",
                            hint=comparison.plan.infeasible_reason)
        bar = _Bar(console, f"{comparison.planner} on {spec.name}", enabled=True)
        try:
            outcome = exp.run(comparison, steps, run_dir=output, progress=bar, command=_command())
        finally:
            bar.close()
    return outcome, comparison


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def _command() -> str:
    return shlex.join(["edgepool", *sys.argv[1:]])


def _print_launch(spec, model_spec, planner: str, plan_file: Path | None, batch: int, seq: int | None, steps: int,
                  lr: float, output: Path | None, other_cluster: bool = False) -> None:
    """Plan for the cluster as specified (real devices), write the worker spec, print one command per host."""
    from edgepool.costmodel import CostModel
    from edgepool.plan import load_plan
    from edgepool.planners import get_planner
    from edgepool.profile import profile_model
    from edgepool.runtime.data import build_bundle
    from edgepool.runtime.launch import torchrun_commands
    from edgepool.runtime.worker import WorkerSpec

    bundle = build_bundle(model_spec)
    if plan_file is not None:
        plan = load_plan(plan_file, cluster=spec, num_layers=len(bundle.blocks), other_cluster=other_cluster)
        from edgepool.profile import check_seq
        check_seq(bundle, plan.seq, field="plan.seq")
    else:
        profile = profile_model(bundle, batch=1, seq=seq)
        plan = get_planner(planner).plan(profile, spec, CostModel(optimizer="sgd"), batch)
    folder = output or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "plan-run.json"
    WorkerSpec(plan=plan.model_dump(mode="json"), model=model_spec.to_dict(), steps=steps, out_dir="edgepool-run",
               batch=batch, seq=seq, lr=lr).save(spec_path)
    commands = torchrun_commands(plan, spec, spec_path.name)
    typer.echo(f"# {plan.planner} plan of {plan.model} on {spec.name}: copy {spec_path} to every host, then run")
    for device, command in commands.items():
        typer.echo(f"# on {device} ({spec.addresses[device]}):")
        typer.echo(command)
