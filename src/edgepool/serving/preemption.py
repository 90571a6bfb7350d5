"""How a running request gives up its KV cache: the two modes, and what each would cost now."""
from __future__ import annotations

import enum
from typing import NamedTuple

from edgepool.errors import SpecError


class PreemptionMode(str, enum.Enum):
    """Recompute drops the victim's KV blocks (re-prefilled later); swap copies them to the host pool and back."""

    RECOMPUTE = "recompute"
    SWAP = "swap"

    @classmethod
    def parse(cls, value: "str | PreemptionMode", field: str = "preempt_mode") -> "PreemptionMode":
        """The mode named by `value`, or a SpecError naming the field, the value and the accepted modes."""
        try:
            return cls(value)
        except ValueError:
            raise SpecError(field=field, value=value, accepted=", ".join(m.value for m in cls)) from None


class PreemptionCosts(NamedTuple):
    """Seconds a recompute and a swap of one victim would cost now, by the cost model (swap None: not possible)."""

    recompute_s: float
    swap_s: float | None

    def cost_of(self, mode: PreemptionMode) -> float:
        return (self.swap_s or 0.0) if mode is PreemptionMode.SWAP else self.recompute_s
