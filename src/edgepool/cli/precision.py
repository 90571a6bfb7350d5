"""`edgepool precision profile|place|eval`: per-unit placement between a device's CPU and its accelerator."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic
from edgepool.cli.progress import StageBar
from edgepool.errors import SpecError

precision_app = typer.Typer(help="Fast, accurate inference on low-cost accelerators: per-unit CPU/accelerator "
                                 "placement under an accuracy floor (FLEX, MLMP).", no_args_is_help=True)

DEFAULT_CACHE = Path(".edgepool-cache/precision")
MODEL_HELP = "digits-cnn, mnist-mobilenetv2 or minilm-tweets."
DEVICE_HELP = "A catalog device with an accelerator (edgepool devices), e.g. rpi5-hailo-8l."
FLOOR_HELP = "Accuracy floor as points below the all-CPU (fp32) validation accuracy, e.g. 1 or 0.5."


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(precision_app, name="precision")


def _open(model: str, device: str, floor: float, cache: Path, quiet: bool):
    from edgepool.precision import experiment as ex
    from edgepool.precision.tasks import TASK_NAMES

    if model not in TASK_NAMES:
        raise SpecError(field="--model", value=model, accepted=", ".join(TASK_NAMES))
    if not 0 <= floor <= 100:
        raise SpecError(field="--accuracy-floor", value=floor, accepted="points below all-CPU, from 0 to 100")
    target_device = ex.resolve_device(device)
    with StageBar(quiet) as bar:
        bench = ex.open_workbench(model, ex.low_precisions([target_device]), cache_dir=cache, progress=bar)
    return ex, bench, target_device


def _print(table) -> None:
    from rich.console import Console

    Console(width=max(80, Console().width)).print(table)


@precision_app.command("profile")
def profile_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    device: str = typer.Option(..., "--device", help=DEVICE_HELP),
    cache: Path = typer.Option(DEFAULT_CACHE, file_okay=False, help="Trained weights and sensitivity tables."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Each unit: FLOPs, fp32 time measured here, time on each side of DEVICE (simulated), accuracy drop when
    it alone runs in each precision (measured on validation)."""
    from edgepool.cli.tables import narrow_table
    from edgepool.precision.cost import CostTable
    from edgepool.precision.placement import device_targets

    ex, bench, dev = _open(model, device, 0.0, cache, as_json)
    costs = CostTable.build(dev, bench.units)
    targets = device_targets(dev)
    lows = [t.precision for t in targets if t.precision != "fp32"]
    rows = []
    for i, unit in enumerate(bench.units):
        rows.append({"unit": bench.task.unit_names[i], "mflop": unit.flops / 1e6,
                     "measured_fp32_ms_here": None if unit.measured_cpu_s is None else unit.measured_cpu_s * 1e3,
                     "simulated_ms": {str(t): costs.unit_s[i][t] * 1e3 for t in targets},
                     "drop_points": {p: bench.sensitivity.drop(i, p) for p in lows}})
    data = {"model": model, "device": dev.name, "validation_accuracy": bench.reference_accuracy(),
            "measured_on": bench.measured_on, "source": bench.task.source, "units": rows,
            "note": "simulated_ms from the cost model; drops and fp32 times measured on this machine"}
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = narrow_table(f"{model} on {dev.name} (sim ms per input; drop: points, measured)",
                         ["unit", "MFLOP", "here ms"] + [str(t) for t in targets] + [f"drop {p}" for p in lows])
    for r in rows:
        here = "-" if r["measured_fp32_ms_here"] is None else f"{r['measured_fp32_ms_here']:.3f}"
        table.add_row(r["unit"], f"{r['mflop']:.2f}", here, *[f"{v:.3f}" for v in r["simulated_ms"].values()],
                      *[f"{v:+.2f}" for v in r["drop_points"].values()])
    _print(table)
    typer.echo(f"all-CPU validation accuracy {100 * data['validation_accuracy']:.2f}%; {bench.task.source}")


@precision_app.command("place")
def place_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    device: str = typer.Option(..., "--device", help=DEVICE_HELP),
    accuracy_floor: float = typer.Option(1.0, "--accuracy-floor", help=FLOOR_HELP),
    policy: str = typer.Option("ours", help="ours, mlmp-min-time, mlmp-max-accuracy, rl, oracle, all-cpu, "
                                            "all-accelerator (the input-dependent policy routes per input: "
                                            "see eval)."),
    out: Path | None = typer.Option(None, dir_okay=False, help="Write the placement (JSON) here."),
    cache: Path = typer.Option(DEFAULT_CACHE, file_okay=False, help="Trained weights and sensitivity tables."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """One policy's placement per unit, its predicted time and energy, and its measured accuracy."""
    from edgepool.cli.tables import narrow_table
    from edgepool.precision import policies as pol
    from edgepool.precision.rl import RLPolicy

    choices = {"ours": pol.Ours, "mlmp-min-time": pol.MlmpMinTime, "mlmp-max-accuracy": pol.MlmpMaxAccuracy,
               "rl": RLPolicy, "oracle": pol.Oracle, "all-cpu": pol.AllCpu, "all-accelerator": pol.AllAccelerator}
    if policy not in choices:
        raise SpecError(field="--policy", value=policy, accepted=", ".join(choices))
    ex, bench, dev = _open(model, device, accuracy_floor, cache, as_json)
    problem = bench.problem(dev, accuracy_floor)
    placement = choices[policy]().place(problem).check(dev, problem.num_units)
    estimate = problem.costs.estimate(placement)
    data = {"model": model, "device": dev.name, "floor_points": accuracy_floor, "policy": placement.policy,
            "placement": placement.model_dump(mode="json"),
            "units": [{"unit": name, "target": str(t), "simulated_ms": problem.costs.unit_s[i][t] * 1e3}
                      for i, (name, t) in enumerate(zip(bench.task.unit_names, placement.targets))],
            "simulated": {"time_ms": estimate.time_s * 1e3, "energy_mj": estimate.energy_j * 1e3,
                          "transfer_ms": estimate.transfer_s * 1e3, "switches": estimate.switches},
            "measured": {"all_cpu_validation_accuracy": problem.reference_accuracy,
                         "validation_accuracy": problem.accuracy(placement.targets),
                         "test_accuracy": bench.evaluator.accuracy(placement.precisions, "test")}}
    if out:
        write_text_atomic(out, json.dumps(data, indent=1))
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = narrow_table(f"{placement.policy}: {model} on {dev.name}, floor -{accuracy_floor:g} pt",
                         ["unit", "runs on", "sim ms"], left=("runs on",))
    for u in data["units"]:
        table.add_row(u["unit"], u["target"], f"{u['simulated_ms']:.3f}")
    _print(table)
    s, m = data["simulated"], data["measured"]
    typer.echo(f"simulated: {s['time_ms']:.3f} ms and {s['energy_mj']:.3f} mJ per input, {s['switches']} "
               f"hand-overs ({s['transfer_ms']:.3f} ms)")
    typer.echo(f"measured: validation {100 * m['validation_accuracy']:.2f}% (all-CPU "
               f"{100 * m['all_cpu_validation_accuracy']:.2f}%), test {100 * m['test_accuracy']:.2f}%")


@precision_app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    device: str = typer.Option(..., "--device", help=DEVICE_HELP),
    accuracy_floor: list[float] = typer.Option([0.5, 1.0], "--accuracy-floor", help=FLOOR_HELP + " Repeatable."),
    rl_timesteps: int = typer.Option(10_000, min=0, help="PPO timesteps for the RL policy (0: leave it out)."),
    out: Path = typer.Option(Path("runs/precision"), file_okay=False, help="Folder for the JSON and the plot."),
    cache: Path = typer.Option(DEFAULT_CACHE, file_okay=False, help="Trained weights and sensitivity tables."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Every policy at every floor: measured accuracy, simulated time and energy, and a Pareto plot."""
    from edgepool.cli.tables import narrow_table

    for floor in accuracy_floor:
        if not 0 <= floor <= 100:
            raise SpecError(field="--accuracy-floor", value=floor, accepted="points below all-CPU, 0 to 100")
    ex, bench, dev = _open(model, device, 0.0, cache, as_json)
    with StageBar(as_json) as bar:
        rows = ex.evaluate_device(bench, dev, tuple(accuracy_floor), rl_timesteps=rl_timesteps, progress=bar)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"precision-{model}-{dev.name}"
    plot = ex.draw_pareto_time_accuracy(rows, out / f"{stem}.png", f"{model} on {dev.name}: test accuracy "
                                        "(measured) vs time (simulated)")
    data = {"model": model, "device": dev.name, "rows": [r.to_dict() for r in rows], "plot": str(plot),
            "note": "accuracy measured on held-out data here; time and energy simulated (cost model)"}
    write_text_atomic(out / f"{stem}.json", json.dumps(data, indent=1))
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = narrow_table(f"{model} on {dev.name}", ["policy", "floor", "val %", "test %", "sim ms", "sim mJ",
                                                     "on acc"])
    for r in rows:
        table.add_row(r.policy, "-" if r.floor_points is None else f"-{r.floor_points:g}",
                      f"{100 * r.validation_accuracy:.2f}", f"{100 * r.test_accuracy:.2f}", f"{r.time_ms:.3f}",
                      f"{r.energy_mj:.3f}", str(r.units_on_accelerator))
    _print(table)
    typer.echo(f"plot: {plot}")
