"""`edgepool split train|eval|plan`: split computing between a device and an edge server."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic
from edgepool.cli.progress import StageBar as _Bar
from edgepool.errors import SpecError

split_app = typer.Typer(help="Split computing: learned bottlenecks, real bitstreams, where to split.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(split_app, name="split")


def _echo_json(data: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


@split_app.command("train")
def train_cmd(
    out: Path = typer.Option(..., file_okay=False, help="The task's artifacts folder (created if missing)."),
    task: str = typer.Option("photos", help="photos (ImageNet MobileNetV2 as teacher) or mnist."),
    method: str = typer.Option("entropic", help="bottlefit or entropic."),
    cut: int = typer.Option(8, help="Cut after this MobileNetV2 block (1-19)."),
    size: int = typer.Option(64, min=1, help="Bottleneck channels."),
    beta: float = typer.Option(0.01, min=0.0, help="Entropic Student: the rate's weight."),
    stride: int = typer.Option(1, help="1 keeps the cut's resolution, 2 halves it."),
    step: float = typer.Option(0.1, min=0.001, help="Entropic Student: starting rounding step (per-component std)."),
    head_epochs: int = typer.Option(5, min=1, help="Stage 1 epochs (bottleneck)."),
    tail_epochs: int = typer.Option(0, min=0, help="Stage 2 epochs (decoder + tail, distillation)."),
    train_per_photo: int = typer.Option(40, min=1, help="Random training crops per photo (photos task)."),
    train_images: int = typer.Option(0, min=0, help="Use this many training images, spread over the set (0: all)."),
    test_images: int = typer.Option(0, min=0, help="On first use: keep this many test images (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Train one bottleneck at a cut (and, on first use, the task's reference, test set and 8-bit baseline)."""
    from edgepool.split import experiment as ex
    from edgepool.split.backbone import check_cut, to_input
    from edgepool.split.pipeline import Artifacts
    from edgepool.split.training import TrainConfig, teacher_cache

    if method not in ("bottlefit", "entropic"):
        raise SpecError(field="--method", value=method, accepted="bottlefit, entropic")
    if stride not in (1, 2):
        raise SpecError(field="--stride", value=stride, accepted="1, 2")
    check_cut(cut, "--cut")
    settings = ex.TaskSettings.of(task)
    with _Bar(as_json) as bar:
        train, test = ex.load_sets(task, train_per_photo=train_per_photo)
        train, test = train.subset(train_images or None), test.subset(test_images or None)
        if (out / "task.json").is_file():
            existing = Artifacts(out).task["task"]
            if existing != task:
                raise SpecError(field="--task", value=task, accepted=existing, hint=f"{out} holds that task")
            reference = Artifacts(out).reference
        else:
            reference = ex.prepare(task, out, train, test, progress=bar)
        inputs = to_input(train.images, settings.side)
        if not Artifacts(out).quantizer_path(cut).is_file():
            ex.fit_quantizer(out, reference, inputs, cut)
        cache = teacher_cache(reference, train, settings.side, cut, inputs)
        spec = ex.train_bottleneck(out, reference, cache, method, cut, size, beta, stride,
                                   TrainConfig(head_epochs=head_epochs, tail_epochs=tail_epochs), progress=bar,
                                   step=step)
    report = {"task": task, "folder": str(out), "bottleneck": spec.__dict__,
              "file": str(Artifacts(out).bottleneck_path(method, spec.level, cut)), "train_images": len(train)}
    _echo_json(report, out / f"train-{method}-{spec.level}-cut{cut}.json")
    typer.echo(json.dumps(report) if as_json else f"trained {method} {spec.level} at cut {cut}: "
               f"{report['file']} (then: edgepool split eval {out})")


@split_app.command("eval")
def eval_cmd(
    folder: Path = typer.Argument(..., file_okay=False, help="A folder trained by `edgepool split train`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure every option's accuracy, real bytes and compute time; write table.json and rate-accuracy.png."""
    from edgepool.split import experiment as ex
    from edgepool.split.evaluate import draw_rate_accuracy
    from edgepool.split.planner import reference_accuracy

    options = ex.options_for(folder)
    with _Bar(as_json) as bar:
        done = iter(range(1, len(options) + 1))
        rows = ex.evaluate(folder, options, progress=lambda name: bar(f"measuring {name}", next(done),
                                                                       len(options)))
    plot = draw_rate_accuracy(rows, folder / "rate-accuracy.png", f"rate-accuracy: {folder.name}")
    report = {"folder": str(folder), "table": [r.to_dict() for r in rows], "plot": str(plot),
              "reference_accuracy": reference_accuracy(rows)}
    _echo_json(report, folder / "eval.json")
    if as_json:
        typer.echo(json.dumps(report))
        return
    from rich.console import Console

    from edgepool.cli.tables import narrow_table

    table = narrow_table(f"rate-accuracy: {folder}", ["option", "acc %", "bytes", "device ms", "server ms"])
    for r in rows:
        table.add_row(r.option.name, f"{100 * r.accuracy:.1f}", f"{r.bytes_per_image:.0f}",
                      f"{1e3 * r.device_s:.1f}", f"{1e3 * r.server_s:.1f}")
    Console().print(table)
    typer.echo(f"wrote {folder / 'table.json'} and {plot}")


@split_app.command("plan")
def plan_cmd(
    folder: Path = typer.Argument(..., file_okay=False, help="A folder evaluated by `edgepool split eval`."),
    bandwidth: str = typer.Option("2Mbps", help="Link bandwidth, e.g. 2Mbps, 500Kbps."),
    device: str = typer.Option("rpi4", help="The device (catalog name)."),
    server: str = typer.Option("laptop-i7-1360p", help="The edge server (catalog name)."),
    max_loss: float = typer.Option(1.0, min=0.0, help="Accuracy loss allowed against the unsplit model (points)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Pick local, offload or a cut and bottleneck for a device, a server and a bandwidth."""
    from edgepool.catalog import get_device
    from edgepool.split.experiment import load_table
    from edgepool.split.planner import plan_split
    from edgepool.testbed.testbed import host_core_device
    from edgepool.units import parse_bandwidth

    try:
        bits_per_s = 8 * parse_bandwidth(bandwidth)
    except ValueError as exc:
        raise SpecError(field="--bandwidth", value=bandwidth, accepted=str(exc)) from None
    rows = load_table(folder)
    host = host_core_device().peak("fp32")
    slowdown = {}
    for role, name in (("--device", device), ("--server", server)):
        try:
            d = get_device(name)
        except SpecError as exc:
            raise SpecError(field=role, value=name, accepted=exc.accepted) from None
        slowdown[role] = host / (d.peak("fp32") * d.efficiency)
    choice = plan_split(rows, bits_per_s, slowdown["--device"], slowdown["--server"], max_loss / 100)
    report = {**choice.to_dict(), "device": device, "server": server,
              "device_slowdown_vs_host_core": slowdown["--device"], "server_slowdown_vs_host_core":
              slowdown["--server"], "modelled": "latency = device compute + bytes / bandwidth + server compute"}
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{choice.name}: {1e3 * choice.predicted_latency_s:.1f} ms per image (modelled) at {bandwidth}, "
               f"accuracy {100 * choice.measure.accuracy:.1f}%, {choice.measure.bytes_per_image:.0f} bytes; "
               f"runner-up {choice.runner_up}")
