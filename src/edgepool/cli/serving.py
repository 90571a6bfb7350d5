"""`edgepool serve` (OpenAI-compatible HTTP over the real engine) and `edgepool serve-sim` (policy simulator)."""
from __future__ import annotations

import typer

from edgepool.errors import SpecError


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: str = typer.Option("llama-small", help="llama-tiny, llama-small or llama-base (random weights)."),
        policy: str = typer.Option("padding-cost", help="vllm, max-reserve, padding, padding-cost, padding-cost-fcfs."),
        host: str = typer.Option("127.0.0.1"),
        port: int = typer.Option(8000),
        kv_blocks: int = typer.Option(256, help="KV-cache blocks on the device."),
        block_size: int = typer.Option(16, help="Tokens per block."),
        host_blocks: int = typer.Option(256, help="Blocks in the bounded host swap pool."),
        max_batch_requests: int = typer.Option(32),
        max_waiting: int = typer.Option(256, help="Queue length beyond which requests get 503."),
        threads: int = typer.Option(1, help="torch CPU threads."),
    ) -> None:
        """Serve /v1/completions (streaming with "stream": true) with the chosen KV-cache policy."""
        import torch
        import uvicorn

        from edgepool.serving.api import create_app
        from edgepool.serving.engine import Engine, EngineConfig
        from edgepool.serving.policies import make_policy
        from edgepool.serving.predictor import train_predictor

        torch.set_num_threads(threads)
        predictor = None
        try:
            uses_predictor = make_policy(policy).uses_predictor
        except SpecError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if uses_predictor:
            typer.echo("training the length predictor on an Alpaca-like synthetic trace ...", err=True)
            predictor, accuracy = train_predictor("alpaca")
            typer.echo(f"predictor held-out accuracy: {accuracy.as_dict()}", err=True)
        config = EngineConfig(model=model, policy=policy, num_blocks=kv_blocks, block_size=block_size,
                              num_host_blocks=host_blocks, max_batch_requests=max_batch_requests,
                              max_batch_tokens=kv_blocks * block_size, max_waiting=max_waiting)
        engine = Engine(config, predictor=predictor)
        typer.echo(f"serving {model} with policy {engine.policy.name}: {kv_blocks} KV blocks of {block_size} tokens, "
                   f"{host_blocks} host blocks, on http://{host}:{port}/v1/completions", err=True)
        uvicorn.run(create_app(engine), host=host, port=port, log_level="info")

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
