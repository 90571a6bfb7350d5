"""`edgepool graph infer|layout`: Fograph's distributed GNN inference, and vertex layouts by graph cuts."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgepool.errors import SpecError

graph_app = typer.Typer(help="Graph neural networks at the edge: Fograph inference over fog nodes, and "
                             "cost-optimal vertex layouts over device / edge / cloud.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(graph_app, name="graph")


def _fail(exc: SpecError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _write(out: Path, report: dict) -> Path:
    from edgepool.atomic import write_text_atomic

    return write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=str))


@graph_app.command("infer")
def infer_cmd(
    cluster: Path = typer.Option(Path("examples/clusters/fog-graph.yaml"), exists=True, dir_okay=False,
                                 help="Fog nodes with locations in the unit square, and a device named 'cloud'."),
    graph: str = typer.Option("sensor", help="sensor, road, sbm (generated) or karate (real, from networkx)."),
    vertices: int = typer.Option(20_000, help="Vertices of a generated graph."),
    model: str = typer.Option("gcn", help="gcn, sage or gat (PyTorch Geometric)."),
    compression: str = typer.Option("degree", help="Fograph's exchanges: none, int8, int4 or degree."),
    frames: int = typer.Option(10, min=1, help="Timed inferences per plan (latency, then as many streamed)."),
    launcher: str = typer.Option("testbed", help="testbed (namespaces, cgroups, tc; root) or local (loopback)."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/graph-infer"), file_okay=False, help="Report and picture go here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Run Fograph, plain fog deployment and cloud serving on the cluster's nodes; measure each."""
    from rich.progress import Progress

    from edgepool.cluster import load_cluster
    from edgepool.graph.compression import MODES
    from edgepool.graph.data import GRAPHS
    from edgepool.graph.experiment import InferSetup, infer_metrics, run_infer
    from edgepool.graph.models import KINDS
    from edgepool.testbed.system import TestbedUnavailable

    try:
        for name, value, accepted in (("--graph", graph, GRAPHS), ("--model", model, KINDS),
                                      ("--compression", compression, MODES), ("--launcher", launcher,
                                                                              ("testbed", "local"))):
            if value not in accepted:
                raise SpecError(field=name, value=value, accepted=", ".join(accepted))
        spec = load_cluster(cluster)
        setup = InferSetup(graph=graph, vertices=vertices, model=model, compression=compression,
                           latency_frames=frames, throughput_frames=frames, launcher=launcher, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        with Progress(disable=as_json, transient=True) as progress:
            bar = progress.add_task("graph infer", total=None)
            report = run_infer(spec, setup, progress=lambda m: progress.update(bar, description=m),
                               plot_path=out / "fograph.png")
    except SpecError as exc:
        _fail(exc)
    except TestbedUnavailable as exc:
        typer.echo(f"error: --launcher = 'testbed' cannot run here: {exc}; use --launcher local", err=True)
        raise typer.Exit(2) from exc
    report["metrics"] = infer_metrics(report)
    path = _write(out, report)
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    from rich.console import Console

    from edgepool.cli.tables import narrow_table

    table = narrow_table(f"{graph}, {report['graph']['vertices']} vertices, {model} ({report['kind']})",
                         ["plan", "codec", "latency ms", "frames/s", "KiB sent", "max err", "agree"])
    for name, r in report["runs"].items():
        table.add_row(name, r["codec"], f"{r['latency_mean_s'] * 1000:.0f}", f"{r['throughput_fps']:.2f}",
                      f"{sum(r['bytes_per_frame'].values()) / 1024:.0f}", f"{r['max_abs_error']:.3g}",
                      f"{r['agreement']:.4f}")
    Console(width=max(80, Console().width)).print(table)
    typer.echo(f"report: {path}; picture: {report['plot']}")


@graph_app.command("layout")
def layout_cmd(
    vertices: int = typer.Option(10_000, help="Vertices of the sensor graph (random geometric, generated)."),
    devices: int = typer.Option(0, help="End devices that sense the vertices (0: one per 50 vertices)."),
    edge_servers: int = typer.Option(9, help="Edge servers between the devices and the cloud."),
    method: str = typer.Option("graphcut", help="graphcut, all-cloud, nearest-tier, metis, random, greedy or exact "
                               "(exact: small graphs only)."),
    access: str = typer.Option("local", help="How devices reach their edge server: local (the site's own network: "
                               "radio energy) or cellular (retail mobile data)."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/graph-layout"), file_okay=False, help="Report and picture go here."),
    as_json: bool = typer.Option(False, "--json", help="Print the layout as one JSON object."),
) -> None:
    """Place every vertex on its device, any edge server or the cloud at the least modelled cost."""
    from dataclasses import replace

    from edgepool.graph.data import sensor_network
    from edgepool.graph.layout import METHODS, VERTICES_PER_DEVICE, draw_layout, plan_layout
    from edgepool.graph.layout_cost import CELLULAR_ACCESS_PER_GB, TierPrices, make_tier_network

    try:
        if method not in METHODS:
            raise SpecError(field="--method", value=method, accepted=", ".join(METHODS))
        if access not in ("local", "cellular"):
            raise SpecError(field="--access", value=access, accepted="local, cellular")
        if not 2 <= vertices <= 1_000_000:
            raise SpecError(field="--vertices", value=vertices, accepted="2 to 1,000,000")
        prices = TierPrices() if access == "local" else replace(TierPrices(), access_per_gb=CELLULAR_ACCESS_PER_GB)
        g = sensor_network(vertices, seed=seed)
        network = make_tier_network(devices or max(vertices // VERTICES_PER_DEVICE, 1), edge_servers, seed=seed)
        layout = plan_layout(g, network, prices, method=method, seed=seed)
    except SpecError as exc:
        _fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    report = {**layout.to_dict(), "access": access, "prices": prices.__dict__}
    report["plot"] = str(draw_layout(g, network, layout, out / "layout.png"))
    path = _write(out, report)
    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    cost = layout.cost
    typer.echo(f"{method}: {vertices} vertices -> " + ", ".join(f"{t} {k}" for t, k in layout.tier_counts.items()))
    typer.echo(f"modelled cost per inference: ${cost['total']:.4g} (compute ${cost['compute']:.3g}, storage "
               f"${cost['storage']:.3g}, communication ${cost['communication']:.3g})")
    typer.echo(f"report: {path}; picture: {report['plot']}")
