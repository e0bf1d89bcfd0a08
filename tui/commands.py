"""`DashCommands`: the command palette's entries, computed from the current state
(posting's habit): the highlighted process's controls, the highlighted incident (show,
acknowledge), every account's pause modes, resume, accept of the broker's positions and
filter, plus the app-wide actions. Each entry runs the same action as its key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.control import ProcessAction
from tui.data import IncidentRow, ProcessRow

Entry = tuple[str, str, Callable[[], object]]  # (title, help, callback)


@runtime_checkable
class Palette(Protocol):
    """What the entries act on: the dashboard (tui.app.Dashboard, which lists
    DashCommands among its COMMANDS)."""

    def selected_process(self) -> ProcessRow | None: ...
    def selected_incident(self) -> IncidentRow | None: ...
    def account_names(self) -> list[str]: ...
    def action_process(self, what: ProcessAction) -> None: ...
    def action_run_now(self) -> None: ...
    def action_log(self) -> None: ...
    def show_incident(self, row: IncidentRow) -> None: ...
    def acknowledge_incident(self, row: IncidentRow) -> None: ...
    def pause_account(self, account: str, mode: str) -> None: ...
    def resume_account(self, account: str) -> None: ...
    def accept_account(self, account: str) -> None: ...
    def set_filter(self, account: str | None) -> None: ...
    def action_sort(self, reverse: bool = False) -> None: ...
    def action_help(self) -> None: ...
    async def action_quit(self) -> None: ...


def palette_entries(app: Palette) -> Iterator[Entry]:
    proc = app.selected_process()
    if proc is not None:
        n = proc.name
        yield f"Restart {n}", "supervisord restart (asks first)  [r]", \
            partial(app.action_process, "restart")
        yield f"Stop {n}", "supervisord stop (asks first)  [x]", \
            partial(app.action_process, "stop")
        yield f"Start {n}", "supervisord start  [s]", partial(app.action_process, "start")
        yield f"Run {n} now", "ask the role to run its job now  [n]", app.action_run_now
        yield f"Open log of {n}", "tail of its supervisord log  [l]", app.action_log
    inc = app.selected_incident()
    if inc is not None:
        what = f"incident {inc.kind} ({inc.where})"
        yield f"Show {what}", "every field and the full text  [Enter on incidents]", \
            partial(app.show_incident, inc)
        if inc.alarming:
            yield f"Acknowledge {what}", "stays listed, no longer an alarm (asks first)  " \
                "[a on incidents]", partial(app.acknowledge_incident, inc)
    for acct in app.account_names():
        for mode in ("halt", "reduce-only"):
            yield f"Pause {acct} ({mode})", "engage the kill switch (asks first)", \
                partial(app.pause_account, acct, mode)
        yield f"Flatten {acct}: managed only", "close what the pipeline manages; external " \
            "positions untouched (asks first)", partial(app.pause_account, acct, "flatten")
        yield f"Flatten {acct}: everything", "close EVERY position, external ones too " \
            "(asks first)", partial(app.pause_account, acct, "flatten-all")
        yield f"Resume {acct}", "release the kill switch (asks first)", \
            partial(app.resume_account, acct)
        yield f"Accept broker positions for {acct}", \
            "take them as the truth, lifting a drift block (asks first)", \
            partial(app.accept_account, acct)
        yield f"Filter: {acct}", "show only this account", partial(app.set_filter, acct)
    yield "Filter: all accounts", "show every account", partial(app.set_filter, None)
    yield "Sort positions by the next column", "[o]; reverse: [O]", app.action_sort
    yield "Help", "keys and status words  [?]", app.action_help
    yield "Quit", "leave the dashboard  [q]", app.action_quit


class DashCommands(Provider):
    def _app(self) -> Palette:
        app = self.app
        assert isinstance(app, Palette)
        return app

    async def discover(self) -> Hits:
        for title, help_text, callback in palette_entries(self._app()):
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in palette_entries(self._app()):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
