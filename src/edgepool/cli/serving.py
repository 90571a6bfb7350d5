"""`edgepool serve` (OpenAI-compatible HTTP over the real engine) and `edgepool serve-sim` (policy simulator)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from edgepool.cli.pool import KEY_FILE_OPTION, KEY_OPTION, POOL_HELP, cluster_and_launcher, one_of
from edgepool.errors import SpecError


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: str = typer.Option("smollm2-135m-instruct", help="A Hugging Face folder, a .gguf file, or a short "
                                  "name (smollm2-135m-instruct); llama-tiny, llama-small, llama-base are "
                                  "random-weight models for timing only."),
        cluster: str = typer.Option(None, "--cluster", help="Serve across this cluster's devices (a name or "
                                    "YAML file); without it (and --pool), this process serves alone."),
        launcher: str = typer.Option("local", "--launcher", help="local | testbed: how the devices' processes "
                                     "start (testbed: emulated CPU speeds, memory and links; needs root)."),
        pool: str = typer.Option(None, "--pool", help=POOL_HELP + " Serves across the agents' devices (a device "
                                 "without this checkpoint's folder resolves a short name itself)."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        requests: int = typer.Option(16, "--concurrent", min=1, help="Concurrent requests the pool is planned for."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
        policy: str = typer.Option("vllm", help="vllm, max-reserve, padding, padding-cost, padding-cost-fcfs."),
        host: str = typer.Option("127.0.0.1"),
        port: int = typer.Option(8000),
        kv_blocks: int = typer.Option(256, help="KV-cache blocks (one process; a pool sizes them from memory)."),
        block_size: int = typer.Option(16, help="Tokens per block."),
        max_batch_requests: int = typer.Option(32),
        max_waiting: int = typer.Option(256, help="Queue length beyond which requests get 503."),
        threads: int = typer.Option(1, help="torch CPU threads (per process)."),
    ) -> None:
        """Serve an LLM over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models, /health),
        in this process or across a cluster's devices (--cluster) or the pool's (--pool)."""
        import torch
        import uvicorn

        from edgepool.serving.api import create_app
        from edgepool.serving.engine import MODEL_CONFIGS

        if cluster is not None and pool is not None:
            one_of(cluster, pool)  # before the checkpoint is resolved (converted, the first time)
        torch.set_num_threads(threads)
        if model in MODEL_CONFIGS:
            if cluster or pool:
                raise SpecError(field="--model", value=model, accepted="a real checkpoint with --cluster or --pool",
                                hint="random-weight zoo models are served by one process only")
            engine = _zoo_engine(model, policy, kv_blocks, block_size, max_batch_requests, max_waiting)
            typer.echo(f"serving {model} (RANDOM weights: for timing, not prose) on http://{host}:{port}/v1", err=True)
            uvicorn.run(create_app(engine), host=host, port=port, log_level="info")
            return
        from edgepool.llm.checkpoint import resolve_checkpoint
        from edgepool.llm.service import local_engine

        checkpoint = resolve_checkpoint(model)
        options = dict(policy=policy, block_size=block_size, max_batch_requests=max_batch_requests,
                       max_waiting=max_waiting)
        if not cluster and not pool:
            if dry_run:
                typer.echo(f"{checkpoint.name} ({checkpoint.source}) in this process")
                return
            engine = local_engine(checkpoint, num_blocks=kv_blocks, **options)
            typer.echo(f"serving {checkpoint.name} in this process on http://{host}:{port}/v1", err=True)
            uvicorn.run(create_app(engine, checkpoint.name), host=host, port=port, log_level="info")
            return
        spec, launcher = cluster_and_launcher(cluster, launcher, pool, key, key_file)
        _serve_pool(checkpoint, spec, launcher, requests, dry_run, host, port, threads, options)

    @app.command("serve-sim")
    def serve_sim(
        workload: str = typer.Option("sharegpt", help="sharegpt or alpaca (length statistics)."),
        policy: list[str] = typer.Option(["vllm", "padding", "padding-cost"], help="Repeat for several."),
        rate: float = typer.Option(0.3, help="Arrivals per second."),
        pattern: str = typer.Option("poisson", help="poisson or bursty."),
        requests: int = typer.Option(300),
        kv_gib: float = typer.Option(4.0, help="KV-cache budget on the device, GiB."),
        device: str = typer.Option("jetson-agx-orin"),
        power_mode: str = typer.Option(None, help="A power mode of the device, e.g. 15W (default: maximum)."),
        seed: int = typer.Option(0),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Simulate policies on a synthetic trace at edge-GPU scale (Llama-2-7B, roofline step costs)."""
        import json

        from rich.console import Console

        from edgepool.catalog import get_device
        from edgepool.cli.tables import narrow_table
        from edgepool.serving.policies import make_policy
        from edgepool.serving.predictor import train_predictor
        from edgepool.serving.simulator import RooflineStepCost, SimConfig, simulate
        from edgepool.serving.traces import generate_trace

        try:
            for name in policy:
                make_policy(name)
            config = SimConfig(device=device, kv_cache_bytes=kv_gib * 2**30, power_mode=power_mode)
            RooflineStepCost(get_device(device), config.model, power_mode=power_mode)
            trace = generate_trace(workload, requests, rate, pattern, seed=seed)
        except (SpecError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        predictor, accuracy = train_predictor(workload)
        reports = {p: simulate(trace, p, config, predictor=predictor) for p in policy}
        if as_json:
            results = {p: json.loads(report.to_json(indent=None)) for p, report in reports.items()}
            typer.echo(json.dumps({"predictor_accuracy": accuracy.as_dict(), "results": results}))
            return
        table = narrow_table(f"simulated: {workload}, {rate} req/s {pattern}, {device}, Llama-2-7B, {kv_gib} GiB KV",
                             ["policy", "mean lat s", "p99 lat s", "TTFT s", "tok/s", "recomp", "swap", "KV util",
                              "lost"])
        columns = ["mean_latency_s", "p99_latency_s", "mean_ttft_s", "throughput_tokens_per_s",
                   "preemptions_recompute", "preemptions_swap", "kv_utilization", "requests_lost"]
        for name, report in reports.items():
            figures = report.metrics
            table.add_row(name, *(f"{figures[c]:.3g}" if isinstance(figures[c], float) else str(figures[c])
                                  for c in columns))
        Console().print(table)


def _zoo_engine(model: str, policy: str, kv_blocks: int, block_size: int, max_batch_requests: int,
                max_waiting: int):
    from edgepool.serving.engine import Engine, EngineConfig
    from edgepool.serving.policies import make_policy
    from edgepool.serving.predictor import train_predictor

    predictor = None
    if make_policy(policy).uses_predictor:
        typer.echo("training the length predictor on an Alpaca-like synthetic trace ...", err=True)
        predictor, accuracy = train_predictor("alpaca")
        typer.echo(f"predictor held-out accuracy: {accuracy.as_dict()}", err=True)
    config = EngineConfig(model=model, policy=policy, num_blocks=kv_blocks, block_size=block_size,
                          num_host_blocks=kv_blocks, max_batch_requests=max_batch_requests,
                          max_batch_tokens=kv_blocks * block_size, max_waiting=max_waiting)
    return Engine(config, predictor=predictor)


def _serve_pool(checkpoint, spec, launcher_kind, requests: int, dry_run: bool, host: str,
                port: int, threads: int, options: dict) -> None:
    """Plan the pool, print the plan and its predictions, then serve through its stages until stopped.
    `launcher_kind`: local or testbed (devices of the spec `spec`), or the pool's launcher (the agents)."""
    import uvicorn

    from edgepool.llm.planner import LLMWorkload, plan_llm
    from edgepool.llm.service import planning_view, pooled_engine
    from edgepool.runtime.launch import make_run_launcher
    from edgepool.serving.api import create_app

    workload = LLMWorkload(requests=requests)
    with make_run_launcher(launcher_kind, spec) as launcher:
        profile, planned, basis = planning_view(checkpoint, spec, launcher)
        if getattr(launcher, "kind", "") == "pool":
            basis = f"the pool's devices and links as measured ({spec.source}), roofline cost model"
        plan = plan_llm(profile, planned, workload)
        _print_plan(plan, basis)
        if not plan.feasible:
            raise typer.Exit(2)
        if dry_run:
            return
        engine = pooled_engine(checkpoint, profile, planned, plan, launcher, workload=workload,
                               threads={d: threads for d in planned.devices}, **options)
        try:
            typer.echo(f"serving {checkpoint.name} on {', '.join(engine.executor.devices)} "
                       f"({engine.blocks.num_blocks} KV blocks) at http://{host}:{port}/v1", err=True)
            with _on_dashboard(launcher, engine, checkpoint.name):
                uvicorn.run(create_app(engine, checkpoint.name), host=host, port=port, log_level="info")
        finally:
            engine.executor.close()


@contextlib.contextmanager
def _on_dashboard(launcher, engine, model: str):
    """On the pool: the serving job on its dashboard (stages, tokens/s, re-plans) while it serves."""
    if getattr(launcher, "kind", "") != "pool":
        yield
        return
    import threading

    from edgepool.cli.runtime import _command
    from edgepool.pool.client import PoolClient
    from edgepool.pool.job import JobReporter, watch_serving

    stop = threading.Event()
    with PoolClient(launcher.coordinator, launcher.key) as client:
        reporter = JobReporter(client, "serving", _command(), None, unit="tokens",
                               work_unit="tokens/s", timeline_source=f"serving {model}: no timeline drawn")
        watch_serving(reporter, engine, stop)
        try:
            yield
        finally:
            stop.set()
            reporter.finish("done")


def _print_plan(plan, basis: str) -> None:
    from edgepool.llm.planner import stage_layer_ranges

    if not plan.feasible:
        typer.echo(f"INFEASIBLE: {plan.infeasible_reason}")
        return
    p = plan.predicted
    for stage, (a, b) in zip(plan.stages, stage_layer_ranges(plan)):
        typer.echo(f"  {stage.devices[0]:<20} layers {a}-{b - 1} ({b - a})")
    typer.echo(f"predicted (simulated; {basis}): {p['tokens_per_s']:.1f} tokens/s for "
               f"{plan.notes['workload']['requests']} concurrent requests, {p['single_stream_tokens_per_s']:.1f} "
               f"tokens/s for one stream, time to first token {p['ttft_s'] * 1e3:.0f} ms")
    for device, why in plan.notes.get("left_out", {}).items():
        typer.echo(f"  left out {device}: {why}")
