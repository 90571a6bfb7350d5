"""`edgepool demo`, the main job: what pooling the home devices buys, planned, simulated and measured.

The workload (a 4-block GPT-2-style decoder, batch 64 x 128 tokens) is chosen so that the best plan really
uses several devices: on the emulated home cluster the phone is the fastest device, and the laptop and the
Jetson on gigabit Ethernet together compute about three quarters as fast. With 64 samples of 128 tokens each
iteration carries enough compute that a second pipeline (or stage group) earns more than the gradient
all-reduce over the shared Wi-Fi costs; at the old 16 x 64 the phone alone was best. The pi, at a thirtieth
of the phone's speed, is left out: any share of the batch it took would hold every iteration back.
The demo runs the best plan and the best single device for real and prints the ratio.
"""
from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

DEMO_MODEL = dict(vocab_size=2048, n_positions=128, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)
DEMO_BATCH, DEMO_SEQ = 64, 128


def single_device_comparisons(exp) -> list:
    """Each device alone, planned by hybrid (its best micro-batch count), labelled '<device> alone'."""
    out = []
    for device in exp.cluster.devices:
        c = exp.compare("hybrid", {"devices": [device]})
        c.planner = f"{device} alone"
        out.append(c)
    return out


def pooling_note(chosen, solo, emulated) -> str:
    """Why the chosen plan pools what it pools: each device's emulated speed relative to the fastest."""
    used = list(dict.fromkeys(chosen.plan.devices))
    speed = {n: d.peak("fp32") for n, d in emulated.devices.items()}
    fastest = max(speed.values())
    rel = ", ".join(f"{n} {speed[n] / fastest:.2f}" for n in sorted(speed, key=lambda n: -speed[n]))
    left = [n for n in emulated.devices if n not in used]
    if len(used) == 1:
        return (f"the best plan is {used[0]} alone: for this workload no split pays for its transfers "
                f"(speeds relative to the fastest: {rel})")
    gain = chosen.simulated.throughput / solo.simulated.throughput
    shape = " | ".join(" -> ".join("+".join(st.devices) for st in p.stages) for p in chosen.plan.pipelines)
    return (f"{chosen.planner} pools {len(used)} devices as {shape} ('|' between data-parallel pipelines, '->' "
            f"between stages, '+' inside a stage's group): {gain:.2f}x {solo.planner} in simulation. Speeds "
            f"relative to the fastest: {rel}"
            + (f"; left out: {', '.join(left)} (too slow to pay for its share)" if left else ""))


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        output: Path = typer.Option(Path("out/demo"), "-o", "--output", file_okay=False,
                                    help="Folder for report.json and the Gantt."),
        launcher: str = typer.Option("testbed", help="testbed (falls back to local without root) or local."),
        steps: int = typer.Option(3, min=2, help="Iterations per run (the first is warm-up)."),
    ) -> None:
        """The main job: plan a small Transformer on the home cluster; run the best plan, which pools several
        devices, and the best single device for real."""
        run_demo(output, launcher, steps)


def run_demo(output: Path, launcher: str, steps: int) -> None:
    from edgepool.cli.runtime import _Bar, _comparison_table, _gantt, _write_json
    from edgepool.cluster import load_cluster
    from edgepool.planners import planner_names
    from edgepool.runtime.data import ModelSpec
    from edgepool.runtime.experiment import Experiment, best

    started = time.time()
    console = Console()
    cluster = load_cluster("home")
    model = ModelSpec(name="gpt2", overrides=DEMO_MODEL, seed=0)
    batch, seq = DEMO_BATCH, DEMO_SEQ
    console.print(f"[bold]edgepool demo[/bold]: {cluster.name} cluster ({', '.join(cluster.devices)}), "
                  f"GPT-2-style decoder ({DEMO_MODEL['n_layer']} layers, width {DEMO_MODEL['n_embd']}), "
                  f"batch {batch} x {seq} tokens")
    with Experiment(cluster, model, batch=batch, seq=seq, launcher_kind=launcher) as exp:
        desc = exp.describe_launcher()
        if desc.get("fallback_reason"):
            console.print(f"[yellow]testbed unavailable: {desc['fallback_reason']}; running plain local "
                          "processes (no CPU quotas, no link shaping)[/yellow]")
        console.print(f"profiled and calibrated this host (1 thread): efficiency {exp.host.efficiency:.2f}, "
                      f"overhead {exp.host.layer_overhead_s * 1e3:.2f} ms per layer pass; planning for the "
                      f"cluster as emulated here")
        comparisons = [exp.compare(p) for p in planner_names()]
        alone = single_device_comparisons(exp)
        solo = best(alone)
        console.print(_comparison_table("planners in simulation (emulated home cluster)",
                                        [c.summary() for c in comparisons + [solo]]))
        chosen = best(comparisons)
        note = pooling_note(chosen, solo, exp.emulated)
        console.print(f"why: {note}")
        runs = [chosen] if len(set(chosen.plan.devices)) == 1 else [chosen, solo]
        for c in runs:
            bar = _Bar(console, f"running {c.planner} for real")
            try:
                exp.run(c, steps, run_dir=output / c.planner.replace(" ", "-"), progress=bar,
                        command="edgepool demo")
            finally:
                bar.close()
    output.mkdir(parents=True, exist_ok=True)
    ratio = chosen.measured.throughput / solo.measured.throughput if solo.measured else 1.0
    result = {
        "demo": "edgepool demo", "cluster": cluster.name, "model": {"zoo": "gpt2", "overrides": DEMO_MODEL},
        "batch": batch, "seq": seq, "steps": steps, "launcher": desc, "host_calibration": exp.host.to_dict(),
        "planners_simulated": [c.summary() for c in comparisons], "best": chosen.planner,
        "single_devices_simulated": [c.summary() for c in alone], "best_single_device": solo.planner,
        "why": note, "measured": {c.planner: c.measured.model_dump(mode="json") for c in runs},
        "ratio_best_over_single_device": ratio, "simulator_error": {c.planner: c.error for c in runs},
        "elapsed_s": time.time() - started, "machine_note": "measured on a shared machine; energy is modelled",
    }
    _write_json(output / "report.json", result)
    gantt = _gantt([r for c in runs for r in (c.simulated, c.measured)], output / "gantt.png",
                   "simulated vs measured timelines: " + " | ".join(c.planner for c in runs))
    console.print(_comparison_table("measured on this host", [c.summary() for c in runs]))
    if len(runs) > 1:
        console.print(f"[bold]{chosen.planner}[/bold] over {len(set(chosen.plan.devices))} devices "
                      f"{chosen.measured.throughput:.2f} samples/s vs [bold]{solo.planner}[/bold] "
                      f"{solo.measured.throughput:.2f} samples/s: [bold]{ratio:.2f}x[/bold] (measured); simulator "
                      "error " + ", ".join(f"{c.planner} {c.error:.0%}" for c in runs))
    console.print(f"wrote {output / 'report.json'} and {gantt} in {result['elapsed_s']:.0f} s")
