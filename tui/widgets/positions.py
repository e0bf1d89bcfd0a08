"""`PositionsTable`: open positions of every account, sortable, gains and losses coloured.

A `VirtualTable`: a refresh sorts the rows (a key function over the plain rows, no cells
built) and formats only the rows on screen, so 2 accounts x 1,000 positions cost what
one screenful costs. Options read as "AAPL 2026-06-19 190 call". Owner says who owns
the position: managed (the pipeline's), external (opened outside it: never sold by exit
rules), or a mixed one's split ("7m/3x": 7 managed, 3 external). `cycle_sort()` moves the
sort to the next column (reverse: flips the order); the cursor stays on its position.
P&L reads in monochrome too: signed figures (+90.00, -2.50%), colour only on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.reactive import reactive

from tui import format as f
from tui.data import PositionRow
from tui.widgets.virtual_table import Cell, VirtualTable


def _present(value: Any) -> tuple[bool, Any]:
    """Sort key part: a missing value (None) sorts first."""
    return (value is not None, 0 if value is None else value)


def _external_share(r: PositionRow) -> Decimal | None:
    """The external part's share of the position (0: managed, 1: external)."""
    external = r.external
    return None if external is None or not r.qty else abs(external) / abs(r.qty)


#: Column key -> what it sorts by (ascending); ties fall back to the row key.
SORT_KEYS: dict[str, Callable[[PositionRow], Any]] = {
    "account": lambda r: r.key,  # account, then symbol
    "symbol": lambda r: (r.description, r.key),
    "qty": lambda r: (r.qty, r.key),
    # Managed first, mixed by their external share, then external; unknown first.
    "owner": lambda r: (_present(_external_share(r)), r.key),
    "pl": lambda r: (_present(r.unrealized_pl), r.key),
    "pct": lambda r: (_present(r.unrealized_pct), r.key),
    "last": lambda r: (_present(r.last_price), r.key),
    "avg": lambda r: (r.avg_entry, r.key),
    "value": lambda r: (_present(r.market_value), r.key),
    # Held for: shortest first, i.e. the latest opening first.
    "held": lambda r: (_present(None if r.opened_at is None else -r.opened_at.timestamp()),
                       r.key),
}


class PositionsTable(VirtualTable[PositionRow]):
    """Positions: account, symbol, qty, owner, P&L $ and %, last, avg entry, value, held."""

    BORDER_TITLE = "Positions"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        # Owner and P&L right after the symbol: they survive an 80-column terminal.
        ("account", "Account"), ("symbol", "Symbol"), ("qty", "Qty"), ("owner", "Owner"),
        ("pl", "Unreal P&L"), ("pct", "P&L %"), ("last", "Last"), ("avg", "Avg entry"),
        ("value", "Mkt value"), ("held", "Held"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = VirtualTable.COMPONENT_CLASSES | {
        "pl--gain", "pl--loss"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "app.show_detail", "Details", id="positions.details"),
    ]
    #: (column key, reverse); default: by account then symbol.
    sort_by: reactive[tuple[str, bool]] = reactive(("account", False))

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: dict[str, PositionRow] = {}
        self._now: datetime | None = None
        self._shown: Sequence[PositionRow] | None = None
        self._shown_sort: tuple[str, bool] | None = None

    def show(self, rows: Sequence[PositionRow], now: datetime) -> None:
        """Show `rows` at clock `now`. The same rows again (the 1 s clock pass) are not
        sorted again (the order does not depend on the clock): only visible ages move."""
        self._now = now
        if rows is self._shown and self.sort_by == self._shown_sort:
            self.refresh_rows()
            return
        self._shown, self._shown_sort = rows, self.sort_by
        self.items = {r.key: r for r in rows}
        self.set_rows(rows, self.sort_by)
        subtitle = self._subtitle()
        if subtitle != self.border_subtitle:  # setting it repaints, even the same text
            self.border_subtitle = subtitle

    def _subtitle(self) -> str:
        column, reverse = self.sort_by
        label = dict(self.COLUMNS)[column]
        return f"{len(self.items)} open · sorted by {label} {'↓' if reverse else '↑'}"

    def watch_sort_by(self) -> None:
        if self._now is not None and self._shown is not None:
            self.show(self._shown, self._now)

    def cycle_sort(self, reverse: bool = False) -> None:
        keys = [k for k, _ in self.COLUMNS]
        column, rev = self.sort_by
        if reverse:
            self.sort_by = (column, not rev)
        else:
            self.sort_by = (keys[(keys.index(column) + 1) % len(keys)], False)

    # --- VirtualTable hooks -------------------------------------------------------------------

    def row_key(self, row: PositionRow) -> str:
        return row.key

    def sort_key(self, column: str) -> Callable[[PositionRow], Any]:
        return SORT_KEYS[column]

    def cells(self, row: PositionRow) -> Sequence[Cell]:
        held = None if self._now is None else f.since(self._now, row.opened_at)
        return (
            (row.account, None),
            (row.description, None),
            (f.qty(row.qty), None),
            (f.owner(row.qty, row.managed), None),
            (f.money(row.unrealized_pl, signed=True), _pl(row.unrealized_pl)),
            (f.pct(row.unrealized_pct), _pl(row.unrealized_pct)),
            (f.price(row.last_price), None),
            (f.price(row.avg_entry), None),
            (f.money(row.market_value), None),
            (f.age(held), None),
        )

    @property
    def selected(self) -> PositionRow | None:
        key = self.cursor_key
        return None if key is None else self.items.get(key)


def _pl(v: Decimal | None) -> str | None:
    if v is None or v == 0:
        return None
    return "pl--gain" if v > 0 else "pl--loss"
