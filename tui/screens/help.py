"""`HelpScreen`: every key of the dashboard, generated from the app's bindings and the
panels' own (so it can never drift from them), and what the status words mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

STATUS_HELP = """\
Status (a symbol and a word, never colour alone):
  ✓ ok        on schedule
  ! LATE      the last completed run is older than its interval allows
  ✗ STALLED   RUNNING but no heartbeat, or no completed run for too long (hung)
  ✗ DOWN      not running under supervisord
  · idle      market closed: an expected idle, not an alarm
  ‖ paused    the account's kill switch holds its dispatcher
  … starting  just (re)started, within the grace period
Gap: age of the last completed run minus the expected interval (+ is overdue).
Restarts: watchdog restarts today (from incidents).
Accounts, Pos "DRIFT": the broker's positions differ from the database's; the position
manager blocks new entries until they agree again or you accept the broker's (a).
Positions, Owner: managed (opened by the pipeline: exit rules apply), external (opened
by hand or by another tool: shown and counted in the risk limits, never sold by exit
rules or a "managed only" flatten; `ops positions adopt` makes it managed), or both:
"7m/3x" is 7 managed and 3 external. An account with manage_external = true manages all.
Incidents: ● OPEN needs a human; ○ acked: someone has it (acknowledged with a on the
incidents panel): it stays listed, muted, but no longer counts as an open incident in
the header or makes `ops status` degraded. It still closes when its condition clears.
Controls act on the highlighted row; pause/resume/accept act on the highlighted row's
account (or the filtered account). Destructive actions ask first.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss_help", "Close", id="help.close")]

    def __init__(self, bindings: list[Binding],
                 panels: Mapping[str, Sequence[Binding]] | None = None) -> None:
        super().__init__()
        self._keys = bindings
        self._panels = panels or {}  # title -> keys active while that panel has the focus

    def compose(self) -> ComposeResult:
        keys = _lines(self._keys)
        for title, panel_keys in self._panels.items():
            keys += f"\n\n{title}:\n" + _lines(panel_keys)
        with VerticalScroll(id="help-box"):
            yield Static("ops dash — keys\n\n" + keys + "\n\n" + STATUS_HELP
                         + "\nEscape closes this help.", id="help-text")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


def _lines(bindings: Sequence[Binding]) -> str:
    return "\n".join(f"  {b.key_display or b.key:<12} {b.description}"
                     for b in bindings if b.description)
