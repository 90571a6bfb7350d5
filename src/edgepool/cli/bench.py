"""`edgepool bench NAME`: run a benchmark module from the repository's `benchmarks/` folder."""
from __future__ import annotations

import json

import typer

from edgepool.benchmarking import available_benchmarks, load_benchmark


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        name: str = typer.Argument(..., help="Benchmark name: a module in benchmarks/."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        quick: bool = typer.Option(False, "--quick", help="Smaller sizes, for smoke tests."),
    ) -> None:
        """Run a benchmark and print its ratios against a baseline measured in the same run."""
        module = load_benchmark(name)
        result = module.run(quick=quick, progress=not as_json)
        if as_json:
            typer.echo(json.dumps(result, default=str))
        else:
            render = getattr(module, "render", None)
            typer.echo(render(result) if render else json.dumps(result, indent=2, default=str))

    @app.command("benchmarks")
    def list_benchmarks() -> None:
        """List the benchmarks `edgepool bench` can run."""
        for name in available_benchmarks():
            typer.echo(name)
