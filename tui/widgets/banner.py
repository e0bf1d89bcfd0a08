"""`Banner`: the one-glance line on top, plus plain-words alarms under it.

Line 1 answers "is everything running, is anything late, what do I hold, what just
happened". Alarm lines appear only when needed: Postgres unreachable (since when, data
from the SQLite buffer as of when, buffered rows), supervisord unreachable, the last
refresh failed (the data shown is stale). Classes -outage / -stale / -alarm carry the
colours (app.tcss); the words carry the meaning, so monochrome terminals lose nothing.
"""

from __future__ import annotations

from datetime import datetime

from textual.widgets import Static

from tui import format as f
from tui.data import DashboardState
from tui.text import StaleInfo, alarm_lines, summary_line


class Banner(Static):
    """Top of the screen: summary line and any alarms."""

    def show(self, state: DashboardState, now: datetime, account: str | None,
             stale: StaleInfo | None) -> None:
        alarms = alarm_lines(state, now, stale)
        self.update("\n".join([summary_line(state, now, account), *alarms]))
        self.set_class(not state.database.reachable, "-outage")
        self.set_class(not state.supervisor.reachable and state.layout == "supervisord",
                       "-nosup")
        self.set_class(stale is not None, "-stale")
        # An acknowledged incident is someone's already: it does not sound the alarm.
        worst = any(p.status_at(now) in f.ALARMING for p in state.processes) or any(
            i.alarming for i in state.incidents)
        self.set_class(worst, "-alarm")
