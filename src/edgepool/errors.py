"""One error type for bad input: it names where, the field, the value and what is accepted."""
from __future__ import annotations


class SpecError(ValueError):
    """Bad user input. The message names the source, the field, the value and what would work."""

    def __init__(self, field: str, value: object, accepted: str, source: str | None = None,
                 hint: str | None = None):
        self.field, self.value, self.accepted, self.source, self.hint = field, value, accepted, source, hint
        where = f"{source}: " if source else ""
        message = f"{where}{field} = {value!r} is not valid; accepted: {accepted}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
