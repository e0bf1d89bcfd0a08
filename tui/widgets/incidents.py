"""`IncidentsTable`: open incidents first (prominent), then acknowledged ones (muted,
"acked by X"), then those closed in the last 24 h with how long they lasted.

Its own keys, active while it has the focus: Enter shows the highlighted incident in full,
`a` acknowledges it (after a confirmation). The app binds `a` to accepting the broker's
positions; a focused widget's binding comes first, so elsewhere `a` still does that. The
actions themselves live on the app (`Dashboard.action_show_incident`, `action_ack_incident`),
with the other controls, its workers and its screens.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from textual.binding import Binding, BindingType

from tui import format as f
from tui.data import IncidentRow
from tui.widgets.keyed_table import KeyedTable, Row

#: Rows in this order: unacknowledged open ones, acknowledged ones, closed ones.
_RANK = {"open": 0, "acked": 1, "closed": 2}


def incident_state(r: IncidentRow) -> str:
    """open | acked | closed."""
    return "closed" if not r.is_open else "acked" if r.acked else "open"


class IncidentsTable(KeyedTable):
    BORDER_TITLE = "Incidents"
    BINDINGS: ClassVar[list[BindingType]] = [
        # Replaces DataTable's own Enter (select_cursor), so it shows in the footer.
        Binding("enter", "app.show_incident", "Details", id="incidents.details"),
        Binding("a", "app.ack_incident", "Acknowledge", id="incidents.ack"),
    ]
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("state", "State"), ("kind", "Kind"), ("where", "Where"), ("opened", "Opened"),
        ("duration", "Lasted"), ("restarts", "Restarts"), ("detail", "Detail"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {"incident--open", "incident--acked",
                                             "incident--closed"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: dict[str, IncidentRow] = {}

    def show(self, rows: Sequence[IncidentRow], now: datetime) -> None:
        self.items = {r.id: r for r in rows}
        self.sync([self._row(r, now) for r in rows], sort=("state", False))
        alarming = sum(1 for r in rows if r.alarming)
        acked = sum(1 for r in rows if r.is_open and r.acked)
        closed = sum(1 for r in rows if not r.is_open)
        self.border_subtitle = (f"{alarming} open · " + (f"{acked} acked · " if acked else "")
                                + f"{closed} closed (24h)")
        self.set_class(alarming > 0, "-open")

    def _row(self, r: IncidentRow, now: datetime) -> Row:
        end = r.closed_at or now
        lasted = f.age((end - r.opened_at).total_seconds())
        state = incident_state(r)
        component = f"incident--{state}"
        # Open first (oldest first: the longest-running trouble on top), then acknowledged
        # ones, then the most recently closed.
        order = (_RANK[state], r.opened_at.timestamp() if r.is_open else -end.timestamp())
        # An acknowledged row is muted throughout: someone has it; the words say who.
        muted = component if state == "acked" else None
        detail = f"acked by {r.acked_by or '?'} · {r.detail}" if state == "acked" else r.detail
        return (r.id, [
            self.styled({"open": "● OPEN", "acked": "○ acked", "closed": "closed"}[state],
                        component, sort_value=order),
            self.styled(r.kind, component if r.is_open else None),
            self.styled(r.where, muted),
            self.styled(f.clock(r.opened_at), muted),
            self.styled(lasted + ("…" if r.is_open else ""), muted),
            self.styled(str(r.restarts), muted),
            self.styled(detail.splitlines()[0][:120] if detail else "", muted),
        ])

    @property
    def selected(self) -> IncidentRow | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)
