"""The `edgepool` command line. Library modules never import this package."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="edgepool",
    help="Pool heterogeneous edge devices for deep-learning training, fine-tuning and inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each area registers its own commands; one file per area keeps them apart.
from . import bench, core, elastic, finetune, inference, power, runtime, serving, training  # noqa: E402

for _area in (core, training, runtime, elastic, inference, finetune, serving, power, bench):
    _area.register(app)


def main() -> None:
    app()
