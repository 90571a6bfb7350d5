"""`edgepool power ...`: profile modes here, PowerTrain predictions, Pareto fronts, Pagoda rooflines, Fulcrum."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic
from edgepool.errors import SpecError

power_app = typer.Typer(help="Power modes: profiles, predictors, Pareto fronts, rooflines, Fulcrum searches.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(power_app, name="power")


def _write_json(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, default=str))


def _plot_pareto(path: Path, times, powers, front: list[int], title: str, chosen: int | None = None,
                 label: str = "chosen") -> Path:
    from edgepool.plotting import draw_pareto

    return draw_pareto(list(zip(times, powers)), path, x_label="time per minibatch (s)",
                       y_label="power (W, modelled)", title=title, front=front, highlight=chosen,
                       highlight_label=label, points_label="modes")


def _jetson_sweep(device: str, model: str, batch: int, phase: str, precision: str):
    from edgepool.catalog import get_device
    from edgepool.models import build_model
    from edgepool.power.modes import jetson_mode_space
    from edgepool.power.power_model import power_model_for
    from edgepool.power.roofline import layer_work, rooflines, sweep
    from edgepool.profile import profile_model

    space = jetson_mode_space(device)
    roof = rooflines(space, get_device(device), power_model_for(space), precision)
    work = layer_work(profile_model(build_model(model, meta=True), batch=1), batch, phase, precision)
    return space, roof, work, sweep(work, roof, batch)


@power_app.command("modes")
def modes_cmd(device: str = typer.Option("jetson-agx-orin", help="A catalog Jetson, or 'local'.")) -> None:
    """Show a device's mode space: dimensions, presets, size and sources."""
    from edgepool.power.modes import jetson_mode_space, local_mode_space

    space = local_mode_space() if device == "local" else jetson_mode_space(device)
    typer.echo(json.dumps({"space": space.name, "modes": space.size, "dims": space.dims,
                           "presets": space.presets, "sources": space.sources}, indent=1))


@power_app.command("profile")
def profile_cmd(
    out: Path = typer.Option(Path("runs/power/profiles.json"), dir_okay=False,
                             help="Where to write the profile table."),
    quick: bool = typer.Option(False, help="36 modes instead of 132."),
    passes: int = typer.Option(1, min=1, help="Sweeps over all modes; the fastest block is kept."),
    workloads: str = typer.Option("", help="Comma-separated workload names (default: the benchmark's)."),
) -> None:
    """Measure time per minibatch of workloads across the emulated modes of this host (real times)."""
    from edgepool.power.modes import local_mode_space, quick_local_mode_space
    from edgepool.power.profiler import profile_modes
    from edgepool.power.workloads import BENCHMARK_WORKLOADS

    known = {w.name: w for w in BENCHMARK_WORKLOADS}
    chosen = list(BENCHMARK_WORKLOADS)
    if workloads:
        names = [n.strip() for n in workloads.split(",") if n.strip()]
        bad = [n for n in names if n not in known]
        if bad:
            raise SpecError(field="--workloads", value=bad[0], accepted=", ".join(known))
        chosen = [known[n] for n in names]
    space = quick_local_mode_space() if quick else local_mode_space()
    table = profile_modes(space, chosen, passes=passes, progress=True, log=typer.echo)
    table.save(out)
    typer.echo(f"wrote {out}: {len(table.rows)} measurements ({table.meta['measured']})")


@power_app.command("predict")
def predict_cmd(
    table: Path = typer.Option(..., exists=True, dir_okay=False, help="A profile table from `edgepool power profile`."),
    reference: str = typer.Option("resnet18-w16-train", help="Workload to pretrain on (all its modes)."),
    workload: str = typer.Option(..., help="Workload to transfer to."),
    samples: int = typer.Option(50, min=2, help="Profiled modes of the new workload used for transfer."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/power/predict"), file_okay=False, help="Output folder (JSON + Pareto plot)."),
) -> None:
    """PowerTrain: pretrain on a reference workload, transfer with a few modes, predict every mode."""
    import numpy as np

    from edgepool.power import powertrain as pt
    from edgepool.power.profiler import ProfileTable, times_array

    data = ProfileTable.load(table)
    for name, value in (("--reference", reference), ("--workload", workload)):
        if value not in data.workloads():
            raise SpecError(field=name, value=value, accepted=", ".join(data.workloads()), source=str(table))
    space = data.mode_space()
    modes = space.modes()
    if samples >= len(modes):
        raise SpecError(field="--samples", value=samples, accepted=f"2 to {len(modes) - 1} (modes in the table)")
    ref_t = times_array(data, reference, modes)
    power = lambda w: np.array([data.series(w, "power_w")[m] for m in modes])  # noqa: E731
    pretrained = pt.fit_predictor(space, modes, ref_t, power(reference))
    idx = np.random.default_rng(seed).choice(len(modes), samples, replace=False)
    hold = np.setdiff1d(np.arange(len(modes)), idx)
    t = times_array(data, workload, modes)
    moved = pt.transfer(pretrained, [modes[i] for i in idx], t[idx], power(workload)[idx])
    pred_t, pred_p = moved.predict(modes)
    linear = pt.linear_scaling(ref_t, idx, t[idx])
    front = pt.pareto_front(pred_t, pred_p)
    result = {"reference": reference, "workload": workload, "samples": samples,
              "time_mape_held_out": pt.mape(pred_t[hold], t[hold]),
              "linear_scaling_mape_held_out": pt.mape(linear[hold], t[hold]),
              "power": "modelled", "pareto_front": [space.describe(modes[i]) for i in front],
              "predictions": [{"mode": space.describe(m), "time_s": float(a), "power_w": float(b),
                               "measured_time_s": float(c)} for m, a, b, c in zip(modes, pred_t, pred_p, t)]}
    _write_json(out / "predict.json", result)
    _plot_pareto(out / "pareto.png", pred_t, pred_p, front, f"PowerTrain transfer to {workload} "
                 f"({samples} modes), predicted")
    typer.echo(f"time MAPE on {len(hold)} held-out modes: {result['time_mape_held_out']:.1f}% "
               f"(linear scaling {result['linear_scaling_mape_held_out']:.1f}%); wrote {out}/predict.json, "
               f"{out}/pareto.png")


@power_app.command("pareto")
def pareto_cmd(
    device: str = typer.Option("jetson-agx-orin", help="A catalog Jetson."),
    model: str = typer.Option("resnet18", help="A zoo model (profiled on the meta device)."),
    batch: int = typer.Option(16, min=1),
    phase: str = typer.Option("train", help="train or infer"),
    precision: str = typer.Option("fp32"),
    budget: float = typer.Option(None, help="Power budget (W): report the fastest mode within it."),
    latency: float = typer.Option(None, help="Latency bound (s): report the min-energy mode within it."),
    out: Path = typer.Option(Path("runs/power/pareto"), file_okay=False, help="Output folder (JSON + plot)."),
) -> None:
    """Pagoda rooflines over a Jetson's mode space: Pareto front of time vs power (simulated)."""
    from edgepool.power import powertrain as pt
    from edgepool.power.roofline import min_energy_mode, placement

    space, roof, work, s = _jetson_sweep(device, model, batch, phase, precision)
    front = pt.pareto_front(s.time_s, s.power_w)
    fastest = pt.best_under_budget(s.time_s, s.power_w, budget) if budget else None
    greenest = min_energy_mode(s, latency) if latency else None
    pick = lambda i: None if i is None else {"mode": space.describe(s.modes[i]), "time_s": float(s.time_s[i]),  # noqa: E731
                                             "power_w": float(s.power_w[i]), "energy_j": float(s.energy_j[i])}
    chosen = fastest if fastest is not None else greenest
    result = {"source": "simulated (Pagoda rooflines, fitted power model)", "device": device, "model": model,
              "batch": batch, "phase": phase, "modes": space.size,
              "pareto_front": [pick(i) for i in front], "fastest_within_budget": pick(fastest),
              "min_energy_within_latency": pick(greenest),
              "layers_at_max_mode": placement(work, roof, space.modes().index(space.max_mode()))}
    _write_json(out / "pareto.json", result)
    _plot_pareto(out / "pareto.png", s.time_s, s.power_w, front, f"{model} {phase} b={batch} on {device} "
                 "(simulated)", chosen, "chosen mode")
    typer.echo(f"{len(front)} Pareto modes of {space.size}; fastest within budget: {result['fastest_within_budget']}; "
               f"min energy within latency: {result['min_energy_within_latency']}; wrote {out}/pareto.json, "
               f"{out}/pareto.png")


@power_app.command("fulcrum")
def fulcrum_cmd(
    table: Path = typer.Option(None, exists=True, dir_okay=False,
                               help="A profile table (measured); default: simulate the AGX Orin."),
    train: str = typer.Option("bert-tiny-train", help="Training workload in the table."),
    budget: float = typer.Option(..., help="Power budget in watts (modelled power)."),
    latency_goal: float = typer.Option(..., help="Inference latency goal in seconds."),
    arrival_rate: float = typer.Option(..., help="Inference requests per second."),
    train_batch: int = typer.Option(8, min=1),
    run_seconds: float = typer.Option(0.0, help="Also run managed vs naive interleaving here for N seconds."),
    out: Path = typer.Option(Path("runs/power/fulcrum"), file_okay=False, help="Output folder."),
) -> None:
    """Fulcrum: GMD and ALS mode searches vs exhaustive and random; optionally a real interleaved run."""
    from edgepool.power import fulcrum as fc
    from edgepool.power import powertrain as pt
    from edgepool.power.profiler import ProfileTable, times_array
    from edgepool.power.workloads import INFERENCE, REFERENCE

    scenario = fc.Scenario(arrival_rate, latency_goal, budget, train_batch)
    if table:
        data = ProfileTable.load(table)
        needed = [train, INFERENCE[0].name, INFERENCE[1].name, REFERENCE.name]
        for name in needed:
            if name not in data.workloads():
                raise SpecError(field="workload", value=name, accepted=", ".join(data.workloads()),
                                source=str(table))
        space = data.mode_space()
        modes = space.modes()
        series = {k: data.series(n) for k, n in (("train", train), ("infer_b1", INFERENCE[0].name),
                                                 ("infer_b8", INFERENCE[1].name))}
        power = data.series(train, "power_w")
        oracle_table = {m: fc.Measurement({k: v[m] for k, v in series.items()}, power[m]) for m in modes}
        ref_modes = space.modes()
        pretrained = pt.fit_predictor(space, ref_modes, times_array(data, REFERENCE.name, ref_modes),
                                      [data.series(REFERENCE.name, "power_w")[m] for m in ref_modes])
        source = f"measured times ({table}), modelled power"
    else:
        space, oracle_table, pretrained = fc.simulated_tables("jetson-agx-orin", "resnet18", "mobilenet_v2",
                                                              "resnet50", train_batch=train_batch)
        source = "simulated AGX Orin (Pagoda rooflines, fitted power model)"
    cap = max(3, space.size // 10)
    best = fc.exhaustive_search(fc.Oracle(space, oracle_table), scenario)
    gmd = fc.gmd_search(fc.Oracle(space, oracle_table), scenario, budget=cap)
    als = fc.als_search(fc.Oracle(space, oracle_table), scenario, pretrained, budget=min(cap, 40))
    rnd = fc.random_search(fc.Oracle(space, oracle_table), scenario, budget=max(gmd.profiled, als.profiled))
    result = {"source": source, "scenario": scenario.__dict__, "modes": space.size, "searches": [
        {"method": r.method, "mode": space.describe(r.mode) if r.mode else None, "throughput": r.throughput,
         "fraction_of_optimum": r.throughput / best.throughput if best.throughput else None,
         "modes_profiled": r.profiled} for r in (best, gmd, als, rnd)]}
    if run_seconds > 0:  # a real run of both policies on this host, at its current (unemulated) mode
        from edgepool.power.workloads import BENCHMARK_WORKLOADS, Workload, build_step
        import torch

        torch.set_num_threads(1)  # one minibatch at a time on one core, as on the device's single GPU

        known = {w.name: w for w in BENCHMARK_WORKLOADS}
        if train not in known:
            raise SpecError(field="--train", value=train, accepted=", ".join(known))
        infer = build_step(Workload("infer-b8", "resnet18", "infer", batch=8, image_size=32, overrides={"width": 16}))
        train_step = build_step(known[train])
        result["interleaved"] = [
            fc.run_interleaved(train_step, lambda b: infer(min(b, 8)), known[train].batch, arrival_rate,
                               latency_goal, run_seconds, managed=managed).to_dict()
            for managed in (True, False)]
    _write_json(out / "fulcrum.json", result)
    for r in result["searches"]:
        typer.echo(f"{r['method']:>10}: throughput {r['throughput']:.2f}/s, {r['modes_profiled']} modes profiled, "
                   f"mode {r['mode']}")
    for r in result.get("interleaved", []):
        typer.echo(f"{r['policy']:>10} interleaving (measured): {r['train_throughput']:.1f} samples/s, "
                   f"p95 latency {r['p95_latency_s'] * 1000:.1f} ms, within goal {r['fraction_within_goal']:.0%}")
    typer.echo(f"wrote {out}/fulcrum.json")
