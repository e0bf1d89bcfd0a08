"""`Banner`: the one-glance verdict on top, plus plain-words alarms under it.

Line 1 answers "is it healthy, is everything running, what do I hold, what just
happened": HEALTHY / DEGRADED / DOWN in words (and colour), then the counts. Alarm lines
say why when it is not healthy, one fact per line: Postgres unreachable (since when, data
from the SQLite buffer as of when), supervisord unreachable, the refresh failing, a
process failing / down / stalled / late, a stream not connected, a kill switch engaged,
an open incident. A short screen shows the first few and says how many more. Classes
-outage / -stale / -alarm and the verdict's component classes carry the colours
(app.tcss); the words carry the meaning, so monochrome terminals lose nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.widgets import Static

from tui import format as f
from tui.data import DashboardState
from tui.text import StaleInfo, alarm_lines, summary_line, verdict

#: Alarm lines shown under the verdict, by screen height class (the rest are counted).
MAX_LINES = {"-short": 2, "-tall": 6}


class Banner(Static):
    """Top of the screen: verdict, summary line and any alarms."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "verdict--healthy", "verdict--degraded", "verdict--down"}

    def show(self, state: DashboardState, now: datetime, account: str | None,
             stale: StaleInfo | None) -> None:
        word, _ = verdict(state, now, stale)
        alarms = alarm_lines(state, now, stale)
        room = MAX_LINES["-short" if self.screen.has_class("-short") else "-tall"]
        if len(alarms) > room:
            more = len(alarms) - room + 1
            alarms = [*alarms[:room - 1], f"… and {more} more: the panels below have them"]
        text = Text.assemble(
            (f" {word.upper()} ", self.get_component_rich_style(f"verdict--{word}")),
            " ", summary_line(state, now, account), no_wrap=True, overflow="ellipsis")
        for line in alarms:
            text.append("\n" + line)
        self.update(text)
        self.set_class(not state.database.reachable, "-outage")
        self.set_class(not state.supervisor.reachable and state.layout == "supervisord",
                       "-nosup")
        self.set_class(stale is not None, "-stale")
        # An acknowledged incident is someone's already: it does not sound the alarm.
        worst = any(p.status_at(now) in f.ALARMING for p in state.processes) or any(
            i.alarming for i in state.incidents)
        self.set_class(worst, "-alarm")
