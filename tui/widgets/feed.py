"""`FeedTable`: the most recent orders and fills of every account, newest first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tui import format as f
from tui.data import FeedRow, describe_symbol
from tui.widgets.keyed_table import KeyedTable, Row


class FeedTable(KeyedTable):
    BORDER_TITLE = "Orders & fills"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("time", "Time"), ("account", "Account"), ("kind", "What"), ("side", "Side"),
        ("symbol", "Symbol"), ("qty", "Qty"), ("price", "Price"), ("status", "Status"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {"feed--fill", "feed--rejected", "side--buy",
                                             "side--sell"}

    def show(self, rows: Sequence[FeedRow]) -> None:
        self.sync([self._row(r) for r in rows], sort=("time", True))

    def _row(self, r: FeedRow) -> Row:
        bad = r.status in ("rejected", "canceled", "expired")
        return (r.key, [
            self.styled(f.clock(r.ts), sort_value=(r.ts, r.kind == "fill")),
            self.styled(r.account),
            self.styled(r.kind, "feed--fill" if r.kind == "fill" else None),
            self.styled(r.side, f"side--{r.side}" if r.side in ("buy", "sell") else None),
            self.styled(describe_symbol(r.symbol)),
            self.styled(r.size),
            self.styled(f.price(r.price)),
            self.styled(r.status, "feed--rejected" if bad else
                        "feed--fill" if r.kind == "fill" else None),
        ])
