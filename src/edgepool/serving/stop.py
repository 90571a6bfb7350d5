"""Stop strings (OpenAI's `stop`): where a completion's text ends, and what may be streamed before that is known.

Tokens arrive one at a time and a stop string may span several, so a streamed response holds back any tail of
the text that could still become a stop string; the text returned never contains the stop string itself.
"""
from __future__ import annotations

MAX_STOP_STRINGS = 4  # OpenAI's limit


class StopStrings:
    """The stop strings of one request (none: the completion runs to EOS or `max_tokens`)."""

    def __init__(self, stops: str | list[str] | None):
        self.stops = [stops] if isinstance(stops, str) else list(stops or [])

    def __bool__(self) -> bool:
        return bool(self.stops)

    def cut(self, text: str) -> tuple[str, bool]:
        """The text before the earliest stop string, and whether one occurred."""
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def safe(self, text: str) -> tuple[str, bool]:
        """What may be streamed now: the text before a stop string, less a tail that could start one."""
        visible, stopped = self.cut(text)
        if stopped:
            return visible, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if visible.endswith(s[:k])), default=0)
        return visible[:len(visible) - hold], False
