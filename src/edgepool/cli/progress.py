"""A rich progress bar fed by the library's `progress(stage, done, total)` callbacks (one bar per stage)."""
from __future__ import annotations


class StageBar:
    """A rich progress bar fed by the library's (stage, done, total) callbacks."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = None if quiet else Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                                    MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "StageBar":
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, stage: str, done: int = 0, total: int | None = None) -> None:
        if not self.progress:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)
