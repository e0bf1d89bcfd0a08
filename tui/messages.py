"""Typed messages the dashboard's workers post to the app.

`StateLoaded` is "latest state": a newer one replaces an older one still queued
(`can_replace`), so a slow UI never works through a backlog of stale snapshots.
"""

from __future__ import annotations

from textual.message import Message

from ops.store.positions import AcceptRecord
from tui.data import DashboardState


class StateLoaded(Message):
    """One complete read of everything the dashboard shows."""

    def __init__(self, state: DashboardState) -> None:
        super().__init__()
        self.state = state

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StateLoaded)


class ActionDone(Message):
    """A control action finished (restart, pause, ...); `ok` False when it failed."""

    def __init__(self, text: str, ok: bool = True) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class PositionsAccepted(Message):
    """An accept of the broker's positions was recorded for `account`; `record` is the
    applied audit row, or None when the position manager had not applied it within
    `waited_s` (it stays pending until its next sync)."""

    def __init__(self, account: str, request_id: str, record: AcceptRecord | None,
                 waited_s: float) -> None:
        super().__init__()
        self.account = account
        self.request_id = request_id
        self.record = record
        self.waited_s = waited_s


class IncidentAcknowledged(Message):
    """An acknowledgement of incident `incident_id` finished: `acked` True when it is now
    acknowledged (by this dashboard, or someone before), `text` says what happened."""

    def __init__(self, incident_id: str, acked: bool, text: str) -> None:
        super().__init__()
        self.incident_id = incident_id
        self.acked = acked
        self.text = text


class IncidentDetailLoaded(Message):
    """The detail screen's read of one incident: its lines, or `error` (the screen then
    keeps what the dashboard last read and says why)."""

    def __init__(self, lines: list[str] | None, error: str | None = None) -> None:
        super().__init__()
        self.lines = lines
        self.error = error
