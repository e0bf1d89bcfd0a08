"""`IncidentsTable`: open incidents first (prominent), then those closed in the last 24 h
with how long they lasted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from tui import format as f
from tui.data import IncidentRow
from tui.widgets.keyed_table import KeyedTable, Row


class IncidentsTable(KeyedTable):
    BORDER_TITLE = "Incidents"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("state", "State"), ("kind", "Kind"), ("where", "Where"), ("opened", "Opened"),
        ("duration", "Lasted"), ("restarts", "Restarts"), ("detail", "Detail"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {"incident--open", "incident--closed"}

    def show(self, rows: Sequence[IncidentRow], now: datetime) -> None:
        self.sync([self._row(r, now) for r in rows], sort=("state", False))
        n_open = sum(1 for r in rows if r.is_open)
        self.border_subtitle = f"{n_open} open · {len(rows) - n_open} closed (24h)"
        self.set_class(n_open > 0, "-open")

    def _row(self, r: IncidentRow, now: datetime) -> Row:
        end = r.closed_at or now
        lasted = f.age((end - r.opened_at).total_seconds())
        component = "incident--open" if r.is_open else "incident--closed"
        # Open first (oldest first: the longest-running trouble on top), then the most
        # recently closed.
        order = (0, r.opened_at.timestamp()) if r.is_open else \
            (1, -end.timestamp())
        return (r.id, [
            self.styled("● OPEN" if r.is_open else "closed", component, sort_value=order),
            self.styled(r.kind, component if r.is_open else None),
            self.styled(r.where),
            self.styled(f.clock(r.opened_at)),
            self.styled(lasted + ("…" if r.is_open else "")),
            self.styled(str(r.restarts)),
            self.styled(r.detail[:120]),
        ])
