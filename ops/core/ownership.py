"""Position ownership: the part of a position the pipeline manages. Pure, no I/O.

A position lot is *managed* (opened by a pipeline order, or adopted by the operator) or
*external* (opened any other way: by hand in Alpaca's UI, by another tool, before the
pipeline started, delivered by the assignment of an external option). Exit rules,
max-hold, close-before-expiry, protective stops and a "managed only" flatten act on the
managed part only; the external part is shown and counts toward exposure and risk limits,
and is never sold unless the operator adopts it (`ops positions adopt TIER SYMBOL`) or the
account's config says `manage_external = true`.

The managed quantity comes from the store (ops.store.ownership: the pipeline's own fills
plus adjustments); the broker's position may have moved past it (an external sale of
managed shares, a partial fill in flight), so `split` bounds it by what is really held.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Holding:
    """One symbol's position, split by owner (signed quantities, like the broker's)."""

    symbol: str
    broker: Decimal
    managed: Decimal
    external: Decimal

    @property
    def owner(self) -> str:
        if self.managed and self.external:
            return "mixed"
        return "managed" if self.managed else "external" if self.external else "none"


def split(symbol: str, broker: Decimal, managed_raw: Decimal, *,
          manage_external: bool = False) -> Holding:
    """The broker's position split into managed and external. The managed part is the
    recorded managed quantity bounded by the position: same direction and no larger (a
    managed quantity opposite to the position, or of a flat one, manages nothing)."""
    if manage_external:
        return Holding(symbol, broker, broker, _ZERO)
    if broker == 0 or managed_raw == 0 or (broker > 0) != (managed_raw > 0):
        return Holding(symbol, broker, _ZERO, broker)
    managed = min(abs(managed_raw), abs(broker)) * (1 if broker > 0 else -1)
    return Holding(symbol, broker, managed, broker - managed)


__all__ = ["Holding", "split"]
