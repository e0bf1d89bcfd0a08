"""`IncidentScreen`: one incident in full — every field `ops incidents show` prints, the
whole detail text, how it ended — scrollable; Escape closes it.

It opens at once with what the dashboard last read (the panel's row), then a worker reads
the full record from Postgres (`DashboardData.incident`) and posts `IncidentDetailLoaded`;
the words come from `ops.commands.incidents.describe`, so the screen and the CLI say the same.
During an outage it keeps the row's fields and says why the rest is missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ops.commands.incidents import describe, short_id
from ops.core.incidents import IncidentRecord
from ops.store import StorageUnavailable
from tui import format as f
from tui.data import IncidentRow
from tui.messages import IncidentDetailLoaded
from tui.widgets.incidents import incident_state

Loader = Callable[[str], Awaitable[IncidentRecord | None]]


def row_lines(row: IncidentRow, now: datetime) -> list[str]:
    """What the panel's row knows, in the layout of `describe` (before the full read, or
    when it fails)."""
    state = incident_state(row)
    acked = "no" if row.acked_by is None and row.acked_at is None else \
        f"by {row.acked_by or '?'}" + ("" if row.acked_at is None else
                                       f" at {row.acked_at:%Y-%m-%d %H:%M:%S}Z")
    ended = (f"still open (for {f.age((now - row.opened_at).total_seconds())})"
             if row.closed_at is None else f"closed at {row.closed_at:%Y-%m-%d %H:%M:%S}Z")
    fields = [("id", row.id), ("kind", row.kind),
              ("state", {"open": "OPEN", "acked": "OPEN, acknowledged",
                         "closed": "closed"}[state]),
              ("where", row.where), ("opened", f"{row.opened_at:%Y-%m-%d %H:%M:%S}Z"),
              ("restarts", str(row.restarts)), ("acknowledged", acked), ("ended", ended)]
    lines = [f"{name + ':':<14}{value}" for name, value in fields]
    return [*lines, "", "detail:", *(f"  {line}" for line in row.detail.splitlines() or
                                      ["(none)"])]


class IncidentScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="incident.close"),
    ]

    def __init__(self, row: IncidentRow, load: Loader, now: Callable[[], datetime]) -> None:
        super().__init__()
        self.row = row
        self._load = load
        self._now = now
        self.loaded = False  # the full record is shown (tests wait on it)
        self.text = "\n".join(row_lines(row, now()))

    def compose(self) -> ComposeResult:
        yield Label(f"incident {short_id(self.row.id)} · {self.row.kind} · {self.row.where}"
                    "  (Esc closes, ↑↓ scroll)", id="incident-title",
                    markup=False)
        with VerticalScroll(id="incident-box"):
            yield Static(self.text, id="incident-text", markup=False)

    def on_mount(self) -> None:
        self.query_one("#incident-box", VerticalScroll).focus()
        self.load()

    @work(exclusive=True, group="incident-detail", exit_on_error=False)
    async def load(self) -> None:
        try:
            record = await self._load(self.row.id)
        except StorageUnavailable:
            self.post_message(IncidentDetailLoaded(None, "Postgres is unreachable"))
            return
        except Exception as exc:
            self.post_message(IncidentDetailLoaded(None, f"{type(exc).__name__}: {exc}"[:200]))
            return
        if record is None:
            self.post_message(IncidentDetailLoaded(None, "it is no longer in the database"))
            return
        self.post_message(IncidentDetailLoaded(describe(record, self._now())))

    def on_incident_detail_loaded(self, message: IncidentDetailLoaded) -> None:
        if message.lines is not None:
            self.loaded = True
            lines = message.lines
        else:
            lines = [f"⚠ showing what the dashboard last read: {message.error}", "",
                     *row_lines(self.row, self._now())]
        self.text = "\n".join(lines)
        self.query_one("#incident-text", Static).update(self.text)

    def action_close(self) -> None:
        self.dismiss(None)
