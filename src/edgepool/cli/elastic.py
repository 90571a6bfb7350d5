"""Elastic training commands: `edgepool train-elastic` (real processes, --fail / --join) and
`edgepool simulate-failure` (throughput over time across a failure, simulated)."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgepool.atomic import write_text_atomic
from edgepool.cli.pool import (KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, cluster_and_launcher, cluster_of,
                               seconds_or_never)
from edgepool.errors import SpecError

_FLAGS = {"failures": "--fail", "joins": "--join", "recovery": "--mode"}  # library names as these commands spell them


def parse_failure(text: str):
    """`--fail DEVICE@STEP` of train-elastic -> a `FailureSpec`."""
    from edgepool.elastic.recovery import FailureSpec
    from edgepool.events import parse_device_at, step_number

    device, step = parse_device_at(text, step_number, field="--fail",
                                   accepted="DEVICE@STEP, e.g. laptop@3 (kill -9 of that device's worker during "
                                            "iteration 3)")
    return FailureSpec(device, step)


def parse_join(text: str, devices=None):
    """`--join DEVICE@STEP` of train-elastic -> a `JoinSpec` (with `devices`, one of them)."""
    from edgepool.elastic.recovery import JoinSpec
    from edgepool.events import parse_device_at, step_number

    device, step = parse_device_at(text, step_number, field="--join", accepted="DEVICE@STEP, e.g. rpi5@2",
                                   devices=devices)
    return JoinSpec(device, step)


def parse_events(fail: list[str], join: list[str], devices) -> list:
    """`--fail/--join DEVICE@SECONDS` of simulate-failure -> `DeviceFailure`/`DeviceJoin` events."""
    from edgepool.events import DeviceFailure, DeviceJoin, parse_device_at, seconds_number

    events = []
    for flag, texts, cls in (("--fail", fail, DeviceFailure), ("--join", join, DeviceJoin)):
        for text in texts or []:
            name, seconds = parse_device_at(text, seconds_number, field=flag,
                                            accepted="DEVICE@SECONDS, e.g. jetson@30", devices=devices)
            events.append(cls(name, seconds))
    return events


def register(app: typer.Typer) -> None:
    @app.command("train-elastic")
    def train_elastic(
        cluster: str = typer.Option(None, help="Cluster YAML file or a shipped example (home, jetson-lab, site64); "
                                               "or --pool."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP + " The workers run on the agents' devices; --fail "
                                                      "kills a device's worker through its agent."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(..., help="A zoo model name."),
        planner: str = typer.Option("gpipe", help="Training planner used at the start and for every re-plan."),
        steps: int = typer.Option(10, min=1, help="Training iterations."),
        batch: int = typer.Option(8, min=1, help="Samples per iteration."),
        seq: int = typer.Option(None, min=1, help="Sequence length for language models."),
        override: list[str] = typer.Option(None, "--override", help="Model config KEY=VALUE (repeatable)."),
        fail: list[str] = typer.Option(None, "--fail", help="DEVICE@STEP: kill -9 that device's worker half-way "
                                                            "through iteration STEP (repeatable)."),
        join: list[str] = typer.Option(None, "--join", help="DEVICE@STEP: a device of the cluster joins at STEP."),
        mode: str = typer.Option("replay", help="replay (pipeline replay from in-memory replicas) or checkpoint "
                                                "(restart everyone from the last checkpoint)."),
        checkpoint_every: int = typer.Option(5, min=1, help="K: checkpoint interval in checkpoint mode."),
        heartbeat_timeout: float = typer.Option(3.0, help="Seconds without a heartbeat before a device is dead."),
        lr: float = typer.Option(0.01, help="Learning rate (SGD)."),
        launcher: str = typer.Option("local", help="local (plain processes on loopback) or testbed (each device "
                                                  "in its cgroup and network namespace, emulating the cluster; "
                                                  "root; falls back to local, saying why); with --pool: the "
                                                  "agents."),
        output: Path = typer.Option(None, "-o", "--output", file_okay=False,
                                    help="Folder for the run (logs, result.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Train for real (local processes, the testbed or the pool) while devices fail and join; report recovery
        times."""
        from edgepool.cli.runtime import _overrides, as_flags
        from edgepool.elastic.recovery import ElasticRun, Supervision, Training
        from edgepool.elastic.replan import default_replan
        from edgepool.elastic.strategy import recovery_strategy
        from edgepool.runtime.data import ModelSpec

        try:
            strategy = recovery_strategy(mode, checkpoint_every=checkpoint_every)
        except SpecError as exc:
            raise as_flags(exc, _FLAGS) from None
        spec, launcher = cluster_and_launcher(cluster, launcher, pool, key, key_file)
        model_spec = ModelSpec(name=model, overrides=_overrides(override))
        failures = [parse_failure(f) for f in fail or []]
        joins = [parse_join(j, spec.devices) for j in join or []]
        replan = default_replan(planner, model_spec, spec, batch, seq)
        start = [d for d in spec.devices if d not in {j.device for j in joins}]
        plan = replan(start)
        try:
            run = ElasticRun(plan, model_spec, steps, replan, strategy, failures=failures, joins=joins,
                             training=Training(batch=batch, seq=seq, lr=lr), out_dir=output,
                             supervision=Supervision(heartbeat_timeout_s=heartbeat_timeout,
                                                     pace_s=0.2 if joins else 0.0),
                             launcher=launcher, cluster=spec)
        except SpecError as exc:
            raise as_flags(exc, _FLAGS) from None
        outcome = run.run()
        result = {"source": "measured", "mode": mode, "plans": [p.devices for p in outcome.plans],
                  "recoveries": outcome.recovery_times(), "samples": outcome.samples,
                  "events": [{k: v for k, v in e.items() if k != "after"} for e in outcome.events],
                  "where": outcome.where, "run_dir": str(outcome.out_dir)}
        write_text_atomic(outcome.out_dir / "result.json", json.dumps(result, indent=2))
        if as_json:
            typer.echo(json.dumps(result))
            return
        out = Console()
        out.print(f"plans: {' -> '.join('+'.join(p) for p in result['plans'])}")
        where = outcome.where
        if where.get("launcher") == "pool":
            out.print(f"ran on the pool {where.get('coordinator', pool)}: one worker per device, started by its agent")
        elif where.get("launcher") == "testbed":
            out.print(f"ran on the testbed {where['run_id']} emulating {where['cluster']} (CPU quotas, memory limits, "
                      "link bandwidths)")
        elif where.get("fallback_reason"):
            out.print(f"[yellow]ran as local processes: the testbed is unavailable ({where['fallback_reason']})")
        for r in result["recoveries"]:
            out.print(f"{r['device']} killed in iteration {r['step']}: interrupted iteration done again after "
                      f"{seconds_or_never(r['time_to_interrupted_iteration_s'])} ({mode})")
        out.print(f"samples lost {outcome.samples['samples_lost']}, double-counted "
                  f"{outcome.samples['samples_double_counted']}; run folder {outcome.out_dir}")

    @app.command("simulate-failure")
    def simulate_failure(
        cluster: str = typer.Option(None, help="Cluster YAML file or a shipped example; or --pool."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(..., help="A zoo model name."),
        batch: int = typer.Option(32, min=1, help="Samples per iteration."),
        planner: str = typer.Option("hybrid", help="Training planner (also used to re-plan)."),
        fail: list[str] = typer.Option(None, "--fail", help="DEVICE@SECONDS (repeatable)."),
        join: list[str] = typer.Option(None, "--join", help="DEVICE@SECONDS (repeatable)."),
        duration: float = typer.Option(120.0, help="Simulated seconds."),
        detection: float = typer.Option(1.0, help="Failure detection time (heartbeat timeout), seconds."),
        restart: float = typer.Option(10.0, help="Checkpoint baseline: seconds to restart every worker."),
        checkpoint_every: int = typer.Option(10, min=1, help="Checkpoint baseline: K iterations."),
        plot: Path = typer.Option(None, "--plot", dir_okay=False, help="Write throughput over time (PNG)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Simulated throughput over time across failures/joins: pipeline replay vs checkpoint restart."""
        from edgepool.costmodel import CostModel
        from edgepool.elastic.replan import replanner
        from edgepool.elastic.sim_events import simulate_with_events
        from edgepool.elastic.strategy import CheckpointRestart, PipelineReplay
        from edgepool.events import DeviceJoin
        from edgepool.models import build_model
        from edgepool.profile import profile_model

        spec = cluster_of(cluster, pool, key, key_file)
        profile = profile_model(build_model(model, meta=True), batch=1)
        cm = CostModel(optimizer="sgd")
        events = parse_events(fail, join, spec.devices)
        joining = {e.device for e in events if isinstance(e, DeviceJoin)}
        replan = replanner(planner, profile, spec, cm, batch)
        plan = replan([d for d in spec.devices if d not in joining])
        strategies = (PipelineReplay(), CheckpointRestart(checkpoint_every=checkpoint_every, restart_s=restart))
        timelines = {s.name: simulate_with_events(plan, spec, cm, profile, events, replan, duration, s,
                                                  detection_s=detection)
                     for s in strategies}
        result = {"source": "simulated", "cluster": spec.name, "model": model,
                  **{m: t.to_dict() for m, t in timelines.items()}}
        if plot is not None:
            from edgepool.plotting import draw_series

            draw_series({m: t.throughput_curve() for m, t in timelines.items()}, plot, x_label="time (s)",
                        y_label="samples/s", title=f"{model} on {spec.name} (simulated)")
            result["plot"] = str(plot)
        if as_json:
            typer.echo(json.dumps(result))
            return
        out = Console()
        for m, t in timelines.items():
            for r in t.recoveries:
                if "regained_s" in r:
                    out.print(f"{m}: {r['device']} fails at {r['at_s']:.0f} s; back where it was after "
                              f"{r['regained_s']:.2f} s (simulated)")
            out.print(f"{m}: {len(t.iterations)} iterations in {duration:.0f} s (simulated)")

