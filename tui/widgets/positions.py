"""`PositionsTable`: open positions of every account, sortable, gains and losses coloured.

Options read as "AAPL 2026-06-19 190 call". `cycle_sort()` moves the sort to the next
column (shift: reverse); the table is sorted in place, so the cursor stays on its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from textual.reactive import reactive

from tui import format as f
from tui.data import PositionRow
from tui.widgets.keyed_table import KeyedTable, Row, SortText


class PositionsTable(KeyedTable):
    """Positions: account, symbol, qty, avg entry, last, value, P&L $ and %, held for."""

    BORDER_TITLE = "Positions"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        # P&L right after the symbol: it survives an 80-column terminal.
        ("account", "Account"), ("symbol", "Symbol"), ("qty", "Qty"), ("pl", "Unreal P&L"),
        ("pct", "P&L %"), ("last", "Last"), ("avg", "Avg entry"), ("value", "Mkt value"),
        ("held", "Held"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {"pl--gain", "pl--loss"}
    #: (column key, reverse); default: by account then symbol (the account column sorts
    #: by "account/symbol").
    sort_by: reactive[tuple[str, bool]] = reactive(("account", False))

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: dict[str, PositionRow] = {}
        self._now: datetime | None = None
        self._cells: dict[str, tuple[PositionRow, list[SortText]]] = {}
        self._held: dict[str, SortText] = {}

    def show(self, rows: Sequence[PositionRow], now: datetime) -> None:
        self.items = {r.key: r for r in rows}
        self._now = now
        for gone in [k for k in self._cells if k not in self.items]:
            del self._cells[gone]
            self._held.pop(gone, None)
        self.sync([self._row(r, now) for r in rows], sort=self.sort_by)
        self.border_subtitle = self._subtitle()

    def _subtitle(self) -> str:
        column, reverse = self.sort_by
        label = dict(self.COLUMNS)[column]
        return f"{len(self.items)} open · sorted by {label} {'↓' if reverse else '↑'}"

    def watch_sort_by(self) -> None:
        if self._now is not None:
            self.show(list(self.items.values()), self._now)

    def cycle_sort(self, reverse: bool = False) -> None:
        keys = [k for k, _ in self.COLUMNS]
        column, rev = self.sort_by
        if reverse:
            self.sort_by = (column, not rev)
        else:
            self.sort_by = (keys[(keys.index(column) + 1) % len(keys)], False)

    def _pl(self, v: Decimal | None) -> str | None:
        if v is None or v == 0:
            return None
        return "pl--gain" if v > 0 else "pl--loss"

    def _row(self, r: PositionRow, now: datetime) -> Row:
        # Cells are built once per distinct row value and reused: with thousands of
        # positions, building cell objects dominated each refresh (bench/dashboard.py).
        cached = self._cells.get(r.key)
        if cached is None or cached[0] != r:
            cached = (r, self._static_cells(r))
            self._cells[r.key] = cached
        held = f.since(now, r.opened_at)
        text = f.age(held)
        cell = self._held.get(r.key)
        if cell is None or cell.plain != text:
            cell = self.styled(text, sort_value=held)
            self._held[r.key] = cell
        return (r.key, [*cached[1], cell])

    def _static_cells(self, r: PositionRow) -> list[SortText]:
        return [
            self.styled(r.account, sort_value=r.key),
            self.styled(r.description),
            self.styled(f.qty(r.qty), sort_value=r.qty),
            self.styled(f.money(r.unrealized_pl, signed=True),
                        self._pl(r.unrealized_pl), sort_value=r.unrealized_pl),
            self.styled(f.pct(r.unrealized_pct), self._pl(r.unrealized_pct),
                        sort_value=r.unrealized_pct),
            self.styled(f.price(r.last_price), sort_value=r.last_price),
            self.styled(f.price(r.avg_entry), sort_value=r.avg_entry),
            self.styled(f.money(r.market_value), sort_value=r.market_value),
        ]

    @property
    def selected(self) -> PositionRow | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)
