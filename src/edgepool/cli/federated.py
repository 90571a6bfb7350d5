"""`edgepool federated run`: one federated method as a real Flower deployment over a cluster's devices."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgepool.errors import SpecError

federated_app = typer.Typer(help="Federated learning on Flower: FedPipe, FlocOff and their baselines.",
                            no_args_is_help=True)

LORA_METHODS = ("fedpipe", "homogeneous-lora")
IMAGE_METHODS = ("fedavg", "fedprox", "flocoff")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(federated_app, name="federated")


def _spec(method: str, cluster, server: str, edge_servers: list[str], task: str, rounds: int, alpha: float,
          aggregator: str, seed: int, cpu_budget: float, max_cores: float):
    """The method's RunSpec over the cluster's devices (the server runs the SuperLink)."""
    from edgepool.federated import experiment, planning

    if method in LORA_METHODS:
        setup = experiment.Setup(text_rounds=rounds, text_alpha=alpha, cpu_budget=cpu_budget,
                                 max_cores_per_device=max_cores)
        pool = planning.Pool.of(cluster, server, cpu_budget=cpu_budget, max_cores_per_device=max_cores)
        return experiment.lora_spec(method, setup, pool, experiment.lora_inputs(setup, seed), aggregator=aggregator,
                                    seed=seed, task=task)
    if method == "flocoff" and not edge_servers:
        raise SpecError(field="--edge-servers", value="", accepted="the devices that receive offloaded data, "
                        "e.g. edge-0,edge-1,edge-2")
    devices = [d for d in cluster.devices if d != server and d not in edge_servers]
    return experiment.image_spec(method, cluster, devices, edge_servers, alpha=alpha, rounds=rounds, seed=seed,
                                 task=task)


@federated_app.command("run")
def run_cmd(
    cluster: Path = typer.Option(..., exists=True, dir_okay=False, help="Cluster YAML (see examples/clusters)."),
    method: str = typer.Option(..., help="fedpipe, homogeneous-lora, fedavg, fedprox or flocoff."),
    server: str = typer.Option(..., help="The device that runs the SuperLink and the ServerApp."),
    edge_servers: str = typer.Option("", help="flocoff: comma-separated devices that receive offloaded data."),
    task: str = typer.Option("", help="tweets-minilm or tweets-smollm2 (LoRA methods); mnist or digits "
                             "(default: tweets-minilm / mnist)."),
    rounds: int = typer.Option(5, min=1),
    alpha: float = typer.Option(0.1, help="Dirichlet concentration of the non-IID split (small: more skew)."),
    aggregator: str = typer.Option("svd", help="fedpipe: zero-padding, stacking or svd."),
    launcher: str = typer.Option("testbed", help="testbed (namespaces, cgroups, tc; root) or local (loopback)."),
    executor: str = typer.Option("fork", help="fork (ClientApps forked from a warm process) or subprocess "
                                 "(Flower's own: one fresh process per message)."),
    cpu_budget: float = typer.Option(1.8, help="Host cores the testbed's quotas add up to at most."),
    max_cores: float = typer.Option(0.55, help="CPU quota of the fastest device, in host cores."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/federated"), file_okay=False, help="Work folder: report, plots, logs."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Run METHOD over the cluster on Flower's deployment runtime: a SuperLink on SERVER, a SuperNode per device."""
    from rich.progress import Progress

    from edgepool.cluster import load_cluster
    from edgepool.federated.deployment import EXECUTORS, run_on_flower
    from edgepool.federated.experiment import draw_curves
    from edgepool.federated.spec import AGGREGATORS

    try:
        if method not in LORA_METHODS + IMAGE_METHODS:
            raise SpecError(field="--method", value=method, accepted=", ".join(LORA_METHODS + IMAGE_METHODS))
        tasks = ("tweets-minilm", "tweets-smollm2") if method in LORA_METHODS else ("mnist", "digits")
        task = task or tasks[0]
        if task not in tasks:
            raise SpecError(field="--task", value=task, accepted=f"{', '.join(tasks)} (for {method})")
        if aggregator not in AGGREGATORS[1:]:
            raise SpecError(field="--aggregator", value=aggregator, accepted=", ".join(AGGREGATORS[1:]))
        if not alpha > 0:
            raise SpecError(field="--alpha", value=alpha, accepted="a positive number")
        if launcher not in ("testbed", "local"):
            raise SpecError(field="--launcher", value=launcher, accepted="testbed, local")
        if executor not in EXECUTORS:
            raise SpecError(field="--executor", value=executor, accepted=", ".join(EXECUTORS))
        spec_cluster = load_cluster(cluster)
        if server not in spec_cluster.devices:
            raise SpecError(field="--server", value=server, accepted=", ".join(spec_cluster.devices))
        edges = [e for e in edge_servers.split(",") if e]
        for e in edges:
            if e not in spec_cluster.devices or e == server:
                raise SpecError(field="--edge-servers", value=e, accepted="devices of the cluster other than --server")
        spec = _spec(method, spec_cluster, server, edges, task, rounds, alpha, aggregator, seed, cpu_budget, max_cores)
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    with Progress(disable=as_json, transient=True) as progress:
        bar = progress.add_task(f"{method}: waiting for the devices", total=rounds)

        def on_event(event: dict) -> None:
            if event["event"] == "round-started":
                progress.update(bar, description=f"{method}: round {event['round']} on {event['devices']} devices")
            elif event["event"] == "evaluated" and event["round"] > 0:
                progress.update(bar, completed=event["round"],
                                description=f"{method}: round {event['round']} accuracy {event['accuracy']:.1f}%")

        report = run_on_flower(spec, spec_cluster, server, out, launcher=launcher, executor=executor,
                               on_event=on_event, memory_scale=None, cpu_budget=cpu_budget,
                               max_cores_per_device=max_cores)
    report["plan"] = spec.notes
    report["plots"] = {x: draw_curves({method: report}, out / f"accuracy-over-{x}.png", x, f"{method} on {task}")
                       for x in ("time", "bytes")}
    from edgepool.atomic import write_text_atomic

    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=str))
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    _table(report)
    typer.echo(f"report: {out / 'report.json'}; plots: {', '.join(report['plots'].values())}")


def _table(report: dict) -> None:
    from rich.console import Console

    from edgepool.cli.tables import narrow_table

    table = narrow_table(f"{report['method']} on {report['task']} (measured, {report['where']['launcher']})",
                         ["round", "s", "train s", "acc %", "MiB down", "MiB up", "devices", "missing"])
    for r in report["rounds"]:
        table.add_row(str(r["round"]), f"{r['seconds']:.1f}", f"{r['train_time_s']:.1f}",
                      f"{r.get('accuracy', 0):.1f}", f"{r['bytes_down'] / 2**20:.2f}", f"{r['bytes_up'] / 2**20:.2f}",
                      str(len(r["replies"])), ",".join(r["failures"]) or "-")
    Console(width=max(80, Console().width)).print(table)
