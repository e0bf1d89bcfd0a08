"""OCC option symbols as the simulated broker reads them (e.g.
AAPL240621C00190000), and the contract multiplier. The simulator's own copy:
it imports nothing of the pipeline (ops.core.models has the pipeline's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

_OCC = re.compile(r"^(?P<root>[A-Z.]{1,6}\d?)(?P<yy>\d{2})(?P<mm>\d{2})(?P<dd>\d{2})"
                  r"(?P<right>[CP])(?P<strike>\d{8})$")


@dataclass(frozen=True, slots=True)
class OptionSymbol:
    """An OCC option symbol, e.g. AAPL240621C00190000 (docs/broker-protocol.md section 3.7)."""

    underlying: str
    expiry: date
    right: str  # "C" | "P"
    strike: Decimal

    @classmethod
    def parse(cls, symbol: str) -> OptionSymbol | None:
        """The parsed symbol, or None when `symbol` is not an OCC option symbol."""
        m = _OCC.match(symbol)
        if m is None:
            return None
        try:
            expiry = date(2000 + int(m["yy"]), int(m["mm"]), int(m["dd"]))
        except ValueError:
            return None
        return cls(m["root"], expiry, m["right"], Decimal(m["strike"]) / 1000)

    def __str__(self) -> str:
        strike = int(self.strike * 1000)
        return f"{self.underlying}{self.expiry:%y%m%d}{self.right}{strike:08d}"

    def describe(self) -> str:
        kind = "call" if self.right == "C" else "put"
        strike = format(self.strike.normalize(), "f")  # 190, not 1.9E+2
        return f"{self.underlying} {self.expiry.isoformat()} {strike} {kind}"


OPTION_MULTIPLIER = Decimal(100)
