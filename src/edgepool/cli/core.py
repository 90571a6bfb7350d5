"""Foundation commands: devices, profile, estimate."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgepool.catalog import list_devices
from edgepool.cli.pool import KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, cluster_of
from edgepool.cli.tables import narrow_table
from edgepool.costmodel import CostModel
from edgepool.estimate import estimate_alone
from edgepool.models import build_model, model_names
from edgepool.profile import profile_model


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def register(app: typer.Typer) -> None:
    @app.command()
    def devices(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        wide: bool = typer.Option(False, "--wide", help="Also show int8 TOPS, CPU cores and power modes."),
    ) -> None:
        """List the built-in device catalog, each number with its source."""
        catalog = list_devices()
        if as_json:
            typer.echo(json.dumps([d.model_dump() for d in catalog], indent=2))
            return
        table = narrow_table("edgepool device catalog (peak = dense vendor figures; see --json for sources)",
                             ["name", "fp32 TFLOPS", "fp16 TFLOPS", "memory GiB", "GB/s", "power W"]
                             + (["int8 TOPS", "cores", "power modes"] if wide else []), left=("power modes",))
        for d in catalog:
            extra = [f"{d.peak('int8') / 1e12:.3g}", str(d.cpu_cores), ", ".join(m.name for m in d.power_modes)]
            table.add_row(d.name, f"{d.peak('fp32') / 1e12:.3g}", f"{d.peak('fp16') / 1e12:.3g}",
                          _gb(d.memory_bytes), f"{d.memory_bandwidth / 1e9:.1f}",
                          f"{d.power_idle_w:g}-{d.power_max_w:g}", *(extra if wide else []))
        Console().print(table)
        boards = [d for d in catalog if d.accelerator]
        if boards:
            table = narrow_table("low-precision accelerators beside the CPU (edgepool precision)",
                                 ["name", "accelerator", "TOPS by precision", "link MB/s", "W"],
                                 left=("accelerator", "TOPS by precision"))
            for d in boards:
                a = d.accelerator
                peaks = ", ".join(f"{p} {a.peak_flops[p] / 1e12:.3g}" for p in a.precisions)
                table.add_row(d.name, a.name, peaks, f"{a.link_bandwidth / 1e6:.0f}", f"{a.power_active_w:g}")
            Console().print(table)

    @app.command()
    def profile(
        model: str = typer.Argument(..., help=f"One of: {', '.join(model_names())}"),
        batch: int = typer.Option(1, min=1),
        seq: int = typer.Option(None, min=1, help="Sequence length for language models."),
        measure: bool = typer.Option(False, help="Also time forward/backward per layer on this machine."),
        meta: bool = typer.Option(None, help="Build on the meta device (no memory); default: only huge models."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Profile a model: per-layer FLOPs, parameter and activation bytes, optionally measured times."""
        bundle = build_model(model, meta=meta if meta is not None else (None if not measure else False))
        prof = profile_model(bundle, batch=batch, seq=seq, measure=measure)
        if as_json:
            typer.echo(json.dumps({**prof.to_dict(), "parameters": bundle.num_parameters(),
                                   "published_parameters": bundle.published_params}, indent=2))
            return
        table = narrow_table(f"{model}: batch {batch}" + (f", seq {prof.seq}" if prof.seq else ""),
                             ["layer", "fwd GFLOP", "bwd GFLOP", "params MB", "out MB", "saved MB"]
                             + (["fwd ms", "bwd ms"] if measure else []))
        for l in prof.layers:
            row = [l.name, f"{l.fwd_flops / 1e9:.3f}", f"{l.bwd_flops / 1e9:.3f}", f"{l.param_bytes / 1e6:.2f}",
                   f"{l.output_bytes / 1e6:.2f}", f"{l.saved_bytes / 1e6:.2f}"]
            if measure:
                row += [f"{l.fwd_time_s * 1e3:.1f}", f"{l.bwd_time_s * 1e3:.1f}"]
            table.add_row(*row)
        Console().print(table)
        typer.echo(f"total forward {prof.total_fwd_flops / 1e9:.2f} GFLOP, backward {prof.total_bwd_flops / 1e9:.2f} "
                   f"GFLOP, parameters {bundle.num_parameters():,}")

    @app.command()
    def estimate(
        cluster: str = typer.Option(None, help="Cluster YAML file or a shipped example name; or --pool."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        model: str = typer.Option(...),
        batch: int = typer.Option(8, min=1),
        seq: int = typer.Option(None, min=1),
        precision: str = typer.Option("fp32"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Per device: time per batch and memory to run the whole model alone, and whether it fits (simulated)."""
        spec = cluster_of(cluster, pool, key, key_file)
        bundle = build_model(model, meta=True)
        prof = profile_model(bundle, batch=1, seq=seq)
        rows = estimate_alone(prof, spec, CostModel(precision=precision), batch)
        if as_json:
            typer.echo(json.dumps({"source": "simulated (roofline cost model)", "cluster": spec.name, "model": model,
                                   "batch": batch, "devices": [r.to_dict() for r in rows]}, indent=2))
            return
        table = narrow_table(f"{model} alone on each device of {spec.name}, batch {batch} (simulated, roofline)",
                             ["device", "train step s", "infer s", "train mem GiB", "infer mem GiB", "device GiB",
                              "fits train", "fits infer"])
        for r in rows:
            table.add_row(r.device, f"{r.train_step_s:.4g}", f"{r.inference_s:.4g}", _gb(r.train_memory_bytes),
                          _gb(r.inference_memory_bytes), _gb(r.memory_bytes), "yes" if r.fits_training else "NO",
                          "yes" if r.fits_inference else "NO")
        Console().print(table)
