"""The `edgepool` command line. Library modules never import this package."""
from __future__ import annotations

import typer
from typer.core import TyperGroup


class _OneLineErrors(TyperGroup):
    """Bad input, a failed worker or an unreadable file ends any command with one line, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:  # noqa: BLE001 - only the kinds below are answered, the rest re-raised
            code = _exit_code(exc)
            if code is None:
                raise
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(code) from None


def _exit_code(exc: Exception) -> int | None:
    from edgepool.characterize.runner import MeasurementFailed
    from edgepool.errors import SpecError
    from edgepool.testbed.launcher import WorkerFailed

    from edgepool.pool.channel import ChannelClosed, Refused

    if isinstance(exc, (SpecError, Refused)):  # a wrong pool key is bad input too
        return 2
    if isinstance(exc, ChannelClosed):
        return 1
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return 2
    if isinstance(exc, (WorkerFailed, TimeoutError, MeasurementFailed)):
        return 1
    return None


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc).splitlines()[0]


app = typer.Typer(
    cls=_OneLineErrors,
    name="edgepool",
    help="Pool heterogeneous edge devices for deep-learning training, fine-tuning and inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each area registers its own commands; one file per area keeps them apart.
from . import (adapt, bench, characterize, core, demo, elastic, federated, finetune, graph,  # noqa: E402
               inference, pool, power, precision, report, runtime, schedule, serving, split, training)

for _area in (core, training, runtime, demo, report, elastic, inference, finetune, adapt, serving, power, pool,
              split, precision, federated, graph, schedule, characterize, bench):
    _area.register(app)


def main() -> None:
    app()
