"""`HistoryView`: the History tab (key 6) — a run-slot strip per process, the incident
timeline, and per account equity and day-P&L sparklines with realised and unrealised P&L,
all over one window (`z` / `Z`: 1 h, 6 h, 24 h).

It loads its own data (`tui.history.HistoryData`) in a worker of its own, only while it is
shown: when it becomes visible, then every 15-30 s (`REFRESH_S`, by zoom), and when the
zoom changes; never on the dashboard's 1 s poll. What it needs from the app (the store, the
clock, the processes to show, the unrealised P&L of the positions last read) comes from
the `inputs` callable it is built with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Sparkline, Static
from textual.worker import Worker, WorkerState

from ops.commands.status import NO_HEARTBEAT
from ops.store import Store
from tui import format as f
from tui.data import DashboardData, DashboardState
from tui.history import (
    DEFAULT_ZOOM,
    REFRESH_S,
    AccountHistory,
    HistoryData,
    HistoryState,
    IncidentLane,
    TimelineTarget,
    next_zoom,
    zoom_label,
)
from tui.widgets.timeline import GLYPHS, LANE_LEGEND, SLOT_LEGEND, Lane, Timeline


@dataclass(frozen=True, slots=True)
class HistoryInputs:
    """What the history needs from the dashboard at load time."""

    store: Store
    now: Callable[[], datetime]
    targets: Sequence[TimelineTarget]  # processes with a run ledger, in display order
    accounts: Sequence[str]
    unrealised: Mapping[str, Decimal | None]  # account -> open positions' unrealised P&L


class AccountHistoryBox(Vertical):
    """One account: equity and day P&L sparklines, the figures beside them, the holes."""

    DEFAULT_CSS = """
    AccountHistoryBox { height: auto; }
    AccountHistoryBox > Horizontal { height: 1; }
    AccountHistoryBox .history-figure { width: 30; height: 1; }
    AccountHistoryBox Sparkline { width: 1fr; height: 1; }
    AccountHistoryBox .history-pnl { height: auto; }
    """

    def __init__(self, account: str) -> None:
        super().__init__(id=f"history-account-{account}", classes="history-account")
        self.account = account
        self._shown: tuple[AccountHistory, Decimal | None] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static("", classes="history-figure -equity", markup=False)
            yield Sparkline([], classes="-equity", summary_function=_last)
        with Horizontal():
            yield Static("", classes="history-figure -day", markup=False)
            yield Sparkline([], classes="-day", summary_function=_last)
        yield Static("", classes="history-pnl", markup=False)

    @property
    def equity(self) -> Sparkline:
        return self.query_one("Sparkline.-equity", Sparkline)

    @property
    def day_pl(self) -> Sparkline:
        return self.query_one("Sparkline.-day", Sparkline)

    @property
    def pnl_text(self) -> str:
        return str(self.query_one(".history-pnl", Static).render())

    def show(self, h: AccountHistory, unrealised: Decimal | None) -> None:
        """Show `h`; kept until the box has composed if it has not yet."""
        self._shown = (h, unrealised)
        if self.is_mounted and self.query(".history-pnl"):
            self._apply()

    def on_mount(self) -> None:
        if self._shown is not None:
            self._apply()

    def _apply(self) -> None:
        assert self._shown is not None
        h, unrealised = self._shown
        self.query_one(".history-figure.-equity", Static).update(
            f"{h.name:<8} equity {f.dollars(h.last_equity):>10}")
        self.query_one(".history-figure.-day", Static).update(
            f"{'':<8} day P&L {f.money(h.last_day_pl, signed=True):>10}")
        self.equity.data = list(h.equity)
        self.day_pl.data = list(h.day_pl)
        parts = [f"{'':<8} realised today {f.money(h.realised_today, signed=True)}"
                 f" (total {f.money(h.realised_total, signed=True)})",
                 f"unrealised {f.money(unrealised, signed=True)}"]
        if not h.points:
            parts.append("no account summary in this window")
        for g in h.holes[-2:]:
            parts.append(f"NO DATA {g.start:%H:%M}–{'now' if g.ongoing else f'{g.end:%H:%M}'}"
                         f" ({f.age(g.seconds)})")
        self.query_one(".history-pnl", Static).update(" · ".join(parts))


def inputs_from(data: DashboardData | None, state: DashboardState | None,
                now: Callable[[], datetime]) -> HistoryInputs | None:
    """The history's inputs from the dashboard's last read (None before the first):
    every process that keeps a run ledger, the accounts, each account's unrealised P&L
    (None when a position's is unknown)."""
    if data is None or state is None:
        return None
    unreal: dict[str, Decimal | None] = {a.name: Decimal(0) for a in state.accounts}
    for p in state.positions:
        prev = unreal.get(p.account, Decimal(0))
        unreal[p.account] = (None if prev is None or p.unrealized_pl is None
                             else prev + p.unrealized_pl)
    targets = [TimelineTarget(p.name, p.account, p.role, p.expected_interval_s,
                              p.bounds.gap_bound_s)
               for p in state.processes if p.name not in NO_HEARTBEAT]
    return HistoryInputs(data.store, now, targets, [a.name for a in state.accounts], unreal)


def _last(values: Sequence[float]) -> float:
    """A bar's value: the last of its bucket (the equity at the end of that time)."""
    return values[-1]


class HistoryView(VerticalScroll, can_focus=True):
    """The History tab: see the module docstring."""

    BORDER_TITLE = "History"
    DEFAULT_CSS = """
    HistoryView > #history-accounts { height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("z", "zoom", "Zoom 1h/6h/24h", id="history.zoom"),
        Binding("Z", "zoom(True)", "Zoom out", id="history.zoom_out", show=False),
    ]
    span: reactive[timedelta] = reactive(DEFAULT_ZOOM)

    class Loaded(Message):
        """A history load finished (latest replaces older queued ones)."""

        def __init__(self, state: HistoryState) -> None:
            super().__init__()
            self.state = state

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, HistoryView.Loaded)

    def __init__(self, inputs: Callable[[], HistoryInputs | None], *,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.inputs = inputs
        self.state: HistoryState | None = None
        self.loads = 0  # completed loads (tests wait on it)
        self._data: HistoryData | None = None
        self._loaded_at = float("-inf")  # monotonic time the last load started
        self._loaded_for: tuple[object, ...] = ()  # what it was for: processes, accounts
        self._unrealised: Mapping[str, Decimal | None] = {}
        self.error: str | None = None  # why the last load has no data (the view keeps
        # showing the last good one)

    def compose(self) -> ComposeResult:
        # Run slots first: on a small screen the holes are what must be seen unscrolled.
        yield Static("loading…", id="history-note", markup=False)
        yield Static("", id="history-runs-title", classes="history-title", markup=False)
        yield Timeline(id="history-runs", empty="no run ledger yet")
        yield Static("", id="history-incidents-title", classes="history-title",
                     markup=False)
        yield Timeline(id="history-incidents", empty="no incident in this window")
        yield Static("[b]Accounts[/b]", id="history-accounts-title", classes="history-title")
        yield Vertical(id="history-accounts")

    def on_mount(self) -> None:
        self._title()
        self.set_interval(1.0, self._tick)

    # --- loading ----------------------------------------------------------------------------

    @property
    def loading_now(self) -> bool:
        return any(w.group == "history" and w.state in (WorkerState.PENDING,
                                                         WorkerState.RUNNING)
                   for w in self.workers)

    def _tick(self) -> None:
        if not self.display:
            return
        inputs = self.inputs()
        due = time.monotonic() - self._loaded_at >= REFRESH_S.get(self.span, 30.0)
        # The account filter (or the process list) changed: what is shown is not it.
        if due or (inputs is not None and _key(inputs) != self._loaded_for):
            self.reload()

    def on_show(self) -> None:
        if time.monotonic() - self._loaded_at >= 2.0:
            self.reload()

    def reload(self, *, restart: bool = False) -> None:
        """Load now unless a load is under way (loads never overlap); `restart`: a load
        under way is cancelled and this one replaces it (a new zoom)."""
        if self.loading_now and not restart:
            return
        inputs = self.inputs()
        if inputs is None:  # the dashboard has not read anything yet: try next tick
            return
        self._loaded_at = time.monotonic()
        self._loaded_for = _key(inputs)
        self._load(inputs, self.span)

    @work(exclusive=True, group="history", exit_on_error=False, name="history")
    async def _load(self, inputs: HistoryInputs, span: timedelta) -> None:
        if self._data is None or self._data.store is not inputs.store:
            self._data = HistoryData(inputs.store, inputs.now)
        state = await self._data.load(span, inputs.targets, inputs.accounts)
        self._unrealised = inputs.unrealised
        self.post_message(self.Loaded(state))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        message.stop()
        self.loads += 1
        self.error = message.state.error
        if self.error is None or self.state is None:
            self.state = message.state
        self.show_state()

    @on(Worker.StateChanged)
    def _failed(self, event: Worker.StateChanged) -> None:
        # The app's handler notifies (the event bubbles on); the note says the view is old.
        if event.worker.group == "history" and event.state == WorkerState.ERROR:
            self.query_one("#history-note", Static).update(
                f"history not refreshed: {type(event.worker.error).__name__}: "
                f"{event.worker.error}"[:200])

    # --- zoom -------------------------------------------------------------------------------

    def action_zoom(self, back: bool = False) -> None:
        self.span = next_zoom(self.span, back)

    def watch_span(self) -> None:
        self._title()
        if self.is_mounted:
            self.reload(restart=True)

    def _title(self) -> None:
        self.border_title = f"History · last {zoom_label(self.span)}"
        self.border_subtitle = "z zoom 1h/6h/24h"

    # --- rendering --------------------------------------------------------------------------

    def show_state(self) -> None:
        state = self.state
        if state is None:
            return
        note = self.query_one("#history-note", Static)
        if state.error:
            note.update(f"! {state.error}")
            return
        if self.error is not None:  # the last load failed: this is the one before it
            note.update(f"! {self.error}; showing what was read at {state.end:%H:%M:%S}")
            return
        unsided = (f" · {state.unsided_fills} fill(s) without a stored order left out of "
                   "realised P&L" if state.unsided_fills else "")
        note.update(f"last {zoom_label(state.span)}: {state.start:%m-%d %H:%M} – "
                    f"{state.end:%m-%d %H:%M} UTC · realised P&L by average cost{unsided}")
        self._show_accounts(state)
        runs_tl = self.query_one("#history-runs", Timeline)
        self.query_one("#history-runs-title", Static).update(
            Text.assemble(("Run slots", "bold"), legend(runs_tl, SLOT_LEGEND)))
        runs_tl.show([Lane(p.name, p.slots) for p in state.processes], state.start,
                     state.end)
        inc_tl = self.query_one("#history-incidents", Timeline)
        open_now = sum(1 for lane in state.incidents if lane.is_open)
        self.query_one("#history-incidents-title", Static).update(Text.assemble(
            ("Incidents", "bold"), f" ({len(state.incidents)}, {open_now} open)",
            legend(inc_tl, LANE_LEGEND)))
        inc_tl.show([Lane(lane.label, _cells(lane, state),
                          "lane--alarm" if lane.is_open else "")
                     for lane in state.incidents], state.start, state.end)

    def _show_accounts(self, state: HistoryState) -> None:
        box = self.query_one("#history-accounts", Vertical)
        have = {w.account: w for w in box.query(AccountHistoryBox)}
        if list(have) != [a.name for a in state.accounts]:
            box.remove_children()
            have = {a.name: AccountHistoryBox(a.name) for a in state.accounts}
            box.mount_all(have.values())
        for a in state.accounts:
            have[a.name].show(a, self._unrealised.get(a.name))

    def account_box(self, account: str) -> AccountHistoryBox:
        return self.query_one(f"#history-account-{account}", AccountHistoryBox)


def _key(inputs: HistoryInputs) -> tuple[object, ...]:
    return (tuple(t.name for t in inputs.targets), tuple(inputs.accounts))


def _cells(lane: IncidentLane, state: HistoryState) -> Callable[[int], Sequence[str]]:
    return lambda columns: lane.cells(state.start, state.end, columns)


def legend(timeline: Timeline, items: Sequence[tuple[str, str]]) -> Text:
    """Each state's glyph in its colour, then its word (a blank glyph shown as [ ])."""
    out = Text()
    for state, word in items:
        glyph = GLYPHS[state]
        out.append("  ")
        out.append(glyph if glyph.strip() else "[ ]",
                   timeline.get_component_rich_style(f"slot--{state}"))
        out.append(f" {word}")
    return out
