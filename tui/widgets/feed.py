"""`FeedTable`: the most recent orders and fills of every account, newest first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.binding import Binding, BindingType

from tui import format as f
from tui.data import FeedRow, describe_symbol
from tui.widgets.keyed_table import KeyedTable, Row


class FeedTable(KeyedTable):
    BORDER_TITLE = "Orders & fills"
    BINDINGS: ClassVar[list[BindingType]] = [
        # Replaces DataTable's own Enter (select_cursor), so it shows in the footer.
        Binding("enter", "app.show_detail", "Details", id="feed.details"),
    ]
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("time", "Time"), ("account", "Account"), ("kind", "What"), ("side", "Side"),
        ("symbol", "Symbol"), ("qty", "Qty"), ("price", "Price"), ("status", "Status"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {"feed--fill", "feed--rejected", "side--buy",
                                             "side--sell"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: dict[str, FeedRow] = {}

    def show(self, rows: Sequence[FeedRow]) -> None:
        self.items = {r.key: r for r in rows}
        self.sync([self._row(r) for r in rows], sort=("time", True))

    @property
    def selected(self) -> FeedRow | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)

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
