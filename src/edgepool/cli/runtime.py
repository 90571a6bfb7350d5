"""Runtime commands: `edgepool train` (run a plan for real) and `edgepool demo` (the main job)."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgepool.atomic import write_text_atomic
from edgepool.errors import SpecError

DEMO_MODEL = dict(vocab_size=2048, n_positions=128, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)


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
    table = Table(title=title)
    for col in ("planner", "stages", "devices", "micro-batches", "simulated samples/s", "measured samples/s",
                "simulator error"):
        table.add_column(col, justify="right")
    for r in rows:
        measured = r.get("measured_throughput")
        error = r.get("simulator_error")
        table.add_row(r["planner"], "+".join(map(str, r["stages"])), ", ".join(r["devices"]), str(r["microbatches"]),
                      f"{r['simulated_throughput']:.2f}" if r["simulated_throughput"] else "-",
                      f"{measured:.2f}" if measured else "-", f"{error:.0%}" if error is not None else "-")
    return table


def _device_table(report) -> Table:
    table = Table(title=f"measured per device ({report.planner}), per iteration")
    for col in ("device", "busy s", "utilization", "peak RSS MiB", "memory limit GiB", "energy J (modelled)"):
        table.add_column(col, justify="right")
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
        cluster: str = typer.Option(..., help="Cluster YAML file or a shipped example (home, jetson-lab, site64)."),
        model: str = typer.Option(..., help="A zoo model name (see `edgepool profile --help`)."),
        planner: str = typer.Option("hybrid", help="dp, dp-proportional, gpipe, pipedream, hybrid, dmp."),
        steps: int = typer.Option(5, min=1, help="Training iterations to run (the first is warm-up, untimed)."),
        launcher: str = typer.Option("testbed", help="local (plain processes) or testbed (emulated cluster; "
                                                     "falls back to local without root)."),
        batch: int = typer.Option(8, min=1, help="Samples per iteration."),
        seq: int = typer.Option(None, min=1, help="Sequence length for language models."),
        override: list[str] = typer.Option(None, "--override", help="Model config KEY=VALUE (repeatable)."),
        plan_file: Path = typer.Option(None, "--plan", help="Run this plan JSON instead of planning."),
        lr: float = typer.Option(0.01, help="SGD learning rate."),
        output: Path = typer.Option(None, "-o", "--output", help="Folder for report.json, plan.json, gantt.png."),
        as_json: bool = typer.Option(False, "--json", help="Print the measured report as JSON."),
        print_launch: bool = typer.Option(False, "--print-launch",
                                          help="Print the torchrun command per host instead of running here."),
    ) -> None:
        """Plan and run training for real (one process per device, torch.distributed/gloo); report measured figures."""
        from edgepool.cluster import load_cluster
        from edgepool.runtime.data import ModelSpec

        console = Console(stderr=True)
        spec = load_cluster(cluster)
        model_spec = ModelSpec(name=model, overrides=_overrides(override))
        if print_launch:
            _print_launch(spec, model_spec, planner, plan_file, batch, seq, steps, lr, output)
            return
        from edgepool.plan import load_plan
        from edgepool.runtime.experiment import Experiment

        with Experiment(spec, model_spec, batch=batch, seq=seq, launcher_kind=launcher, lr=lr) as exp:
            if plan_file is not None:
                from edgepool.runtime.experiment import Comparison
                plan = load_plan(plan_file, cluster=spec, num_layers=len(exp.profile))
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

    @app.command()
    def demo(
        output: Path = typer.Option(Path("out/demo"), "-o", "--output", help="Folder for report.json and the Gantt."),
        launcher: str = typer.Option("testbed", help="testbed (falls back to local without root) or local."),
        steps: int = typer.Option(3, min=2, help="Iterations per run (the first is warm-up)."),
    ) -> None:
        """The main job: plan a small Transformer on the home cluster, run the best plan and dp for real."""
        from edgepool.cluster import load_cluster
        from edgepool.runtime.data import ModelSpec
        from edgepool.runtime.experiment import Experiment, best

        started = time.time()
        console = Console()
        cluster = load_cluster("home")
        model = ModelSpec(name="gpt2", overrides=DEMO_MODEL, seed=0)
        batch, seq = 16, 64
        console.print(f"[bold]edgepool demo[/bold]: {cluster.name} cluster ({', '.join(cluster.devices)}), "
                      f"GPT-2-style decoder ({DEMO_MODEL['n_layer']} layers, width {DEMO_MODEL['n_embd']}), "
                      f"batch {batch} x {seq} tokens")
        with Experiment(cluster, model, batch=batch, seq=seq, launcher_kind=launcher) as exp:
            desc = exp.describe_launcher()
            if desc.get("fallback_reason"):
                console.print(f"[yellow]testbed unavailable: {desc['fallback_reason']}; running plain local "
                              "processes (no CPU quotas, no link shaping)[/yellow]")
            console.print(f"profiled and calibrated this host (1 thread): efficiency "
                          f"{exp.host.efficiency:.2f}, overhead {exp.host.layer_overhead_s * 1e3:.2f} ms per layer "
                          f"pass; planning for the cluster as emulated here")
            from edgepool.planners import planner_names
            comparisons = [exp.compare(p) for p in planner_names()]
            console.print(_comparison_table("planners in simulation (emulated home cluster)",
                                            [c.summary() for c in comparisons]))
            chosen = best(comparisons)
            baseline = next(c for c in comparisons if c.planner == "dp")
            runs = [chosen] if chosen is baseline else [chosen, baseline]
            for c in runs:
                bar = _Bar(console, f"running {c.planner} for real")
                try:
                    exp.run(c, steps, run_dir=output / c.planner, progress=bar, command="edgepool demo")
                finally:
                    bar.close()
        output.mkdir(parents=True, exist_ok=True)
        result = {
            "demo": "edgepool demo", "cluster": cluster.name, "model": {"zoo": "gpt2", "overrides": DEMO_MODEL},
            "batch": batch, "seq": seq, "steps": steps, "launcher": desc, "host_calibration": exp.host.to_dict(),
            "planners_simulated": [c.summary() for c in comparisons], "best": chosen.planner,
            "measured": {c.planner: c.measured.model_dump(mode="json") for c in runs},
            "ratio_best_over_dp": chosen.measured.throughput / baseline.measured.throughput,
            "simulator_error": {c.planner: c.error for c in runs},
            "elapsed_s": time.time() - started,
            "machine_note": "measured on a shared machine; energy is modelled",
        }
        _write_json(output / "report.json", result)
        gantt = _gantt([r for c in runs for r in (c.simulated, c.measured)], output / "gantt.png",
                       "simulated vs measured timelines: " + " | ".join(c.planner for c in runs))
        console.print(_comparison_table("measured on this host", [c.summary() for c in runs]))
        console.print(f"[bold]{chosen.planner}[/bold] {chosen.measured.throughput:.2f} samples/s vs [bold]dp[/bold] "
                      f"{baseline.measured.throughput:.2f} samples/s: "
                      f"[bold]{result['ratio_best_over_dp']:.2f}x[/bold] (measured); simulator error "
                      + ", ".join(f"{c.planner} {c.error:.0%}" for c in runs))
        console.print(f"wrote {output / 'report.json'} and {gantt} in {result['elapsed_s']:.0f} s")


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def _command() -> str:
    return shlex.join(["edgepool", *sys.argv[1:]])


def _print_launch(spec, model_spec, planner: str, plan_file: Path | None, batch: int, seq: int | None, steps: int,
                  lr: float, output: Path | None) -> None:
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
        plan = load_plan(plan_file, cluster=spec, num_layers=len(bundle.blocks))
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
