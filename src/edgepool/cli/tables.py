"""Rich tables that stay readable in an 80-column terminal: the first column, which tells the rows apart, never
wraps or shortens; the other cells wrap at spaces and fold a long word rather than end it in '…'."""
from __future__ import annotations

from rich.table import Table


def narrow_table(title: str, headers: list[str], left: tuple[str, ...] = ()) -> Table:
    """A table whose first column keeps whole names; `left` names the other left-aligned columns."""
    table = Table(title=title)
    first, *rest = headers
    table.add_column(first, no_wrap=True)
    for header in rest:
        table.add_column(header, justify="left" if header in left else "right", overflow="fold")
    return table
