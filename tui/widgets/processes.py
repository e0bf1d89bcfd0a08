"""`ProcessesTable`: every supervised process with its gap status, recomputed each second.

`show(rows, now)` is called on each data load and on each clock tick; ages and status come
from the rows' timestamps (`ProcessRow.status_at`), so a tick does no I/O and a heartbeat
that stops arriving turns the row to stalled even while the database is slow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from ops.core.gaps import GapStatus
from tui import format as f
from tui.data import ProcessRow
from tui.widgets.keyed_table import KeyedTable, Row


class ProcessesTable(KeyedTable):
    """Processes: name, account, role, state, pid, uptime, heartbeat, last run, gap, status."""

    BORDER_TITLE = "Processes"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        # What answers "running? late?" first, so it survives an 80-column terminal.
        # Restarts before the supervisord facts: a crash loop shows at 80 columns too.
        ("status", "Status"), ("name", "Process"), ("heartbeat", "Beat"),
        ("last_run", "Last run"), ("gap", "Gap"), ("restarts", "Restarts"),
        ("state", "State"), ("pid", "PID"), ("uptime", "Up"), ("account", "Account"),
        ("role", "Role"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status--ok", "status--late", "status--stalled", "status--failing", "status--idle",
        "status--paused", "status--starting", "status--down",
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.statuses: dict[str, GapStatus] = {}
        self.items: dict[str, ProcessRow] = {}

    def show(self, rows: Sequence[ProcessRow], now: datetime) -> None:
        self.items = {r.name: r for r in rows}
        self.statuses = {r.name: r.status_at(now) for r in rows}
        self.sync([self._row(r, self.statuses[r.name], now) for r in rows])

    def _row(self, r: ProcessRow, status: GapStatus, now: datetime) -> Row:
        component = f"status--{f.STATUS_WORD[status]}"
        hb = r.heartbeat_age_s(now)
        run = r.last_run_age_s(now)
        return (r.name, [
            self.styled(f.status_text(status), component),
            self.styled(r.name),
            self.styled(f.age(hb), "status--stalled" if status == "stalled" and hb is not None
                        and hb > r.bounds.heartbeat_stale_s else None),
            self.styled(f.age(run) + (f" {r.last_run_outcome}" if r.last_run_outcome
                                      not in (None, "ok") else "")),
            self.styled(f.signed_age(r.gap_s(now)), component if status == "late" else None),
            self.styled(str(r.restarts_today), "status--late" if r.restarts_today else None),
            self.styled(state := r.state_at(now), None if state == "RUNNING" else "status--down"),
            self.styled("-" if r.pid is None else str(r.pid)),
            self.styled(f.age(r.uptime_s(now))),
            self.styled(r.account or "*"),
            self.styled(r.role),
        ])

    @property
    def selected(self) -> ProcessRow | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)
