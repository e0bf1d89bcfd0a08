"""`Dashboard`: the Textual app behind `ops dash`.

Data flow (dolphie's, harlequin's): a 1 s timer starts the `poll` worker unless one is
still running (polls never overlap); the worker reads everything through `DashboardData`
and posts one `StateLoaded` (latest state replaces older queued ones). A separate 1 s
clock recomputes ages and gap statuses from stored timestamps, with no I/O. Nothing
renders while a modal (confirm, help, log) is open; the latest state is applied when it
closes. One `Worker.StateChanged` handler turns any worker error into a notice and a
stale marker, so a failing read never takes the dashboard down.

Keys: the app's BINDINGS, plus the incidents panel's own (Enter: the incident in full; a:
acknowledge it), which take precedence while that panel has the focus; everywhere else `a`
accepts the broker's positions.

Layout: banner, accounts, then four panels (processes, positions, incidents, orders &
fills): a 2x2 grid on large terminals, one panel at a time (keys 1-4, Tab strip) on small
ones, processes above one other panel on tall narrow ones; breakpoints set the
-narrow/-wide and -short/-tall screen classes. Colours live in app.tcss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from ops.commands.control import AcceptFailed
from ops.commands.signals import describe as describe_signal
from ops.core.models import KillSwitch
from ops.runtime.errors import underlying
from ops.supervise.supervisor import SupervisorClient, program_name
from tui import control
from tui.commands import DashCommands
from tui.data import DashboardData, DashboardState, IncidentRow, ProcessRow, utcnow
from tui.messages import ActionDone, IncidentAcknowledged, PositionsAccepted, StateLoaded
from tui.screens.accept import AcceptPositionsScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.detail import DetailScreen, feed_lines, position_lines
from tui.screens.help import HelpScreen
from tui.screens.incident import IncidentScreen
from tui.screens.log_tail import LogTailScreen
from tui.screens.pause import PauseModeScreen
from tui.text import StaleInfo, processes_note
from tui.widgets.accounts import AccountsTable
from tui.widgets.banner import Banner
from tui.widgets.feed import FeedTable
from tui.widgets.footer import DashFooter
from tui.widgets.history import HistoryInputs, HistoryView, inputs_from
from tui.widgets.incidents import IncidentsTable
from tui.widgets.positions import PositionsTable
from tui.widgets.processes import ProcessesTable
from tui.widgets.signals import SignalsTable

log = logging.getLogger(__name__)

PANELS: tuple[tuple[str, str], ...] = (
    ("processes", "Processes"), ("positions", "Positions"), ("incidents", "Incidents"),
    ("feed", "Orders & fills"), ("signals", "Signals"), ("history", "History"),
)
DataOpener = Callable[[], Awaitable[DashboardData]]


#: The two flatten choices (ops pause --mode flatten / flatten-all), as the dialog says them.
FLATTEN_MANAGED_TEXT = ("The pipeline's open orders are canceled and the positions it "
                        "manages are closed. External positions (opened by hand or by "
                        "another tool) and their orders are left untouched.")
FLATTEN_ALL_TEXT = ("EVERY open order is canceled and EVERY POSITION IS CLOSED, including "
                    "external ones the pipeline did not open (by hand in Alpaca, by another "
                    "tool). Use \"managed only\" to keep them.")


class Dashboard(App[None]):
    """Positions, heartbeats, last-run gaps, incidents and control, over SSH."""

    CSS_PATH = "app.tcss"
    TITLE = "ops dash"
    COMMANDS = App.COMMANDS | {DashCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (140, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    # Footer order = importance: an 80-column footer shows the first ones.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,f1", "help", "Help", id="dash.help", key_display="?"),
        Binding("q", "quit", "Quit", id="dash.quit"),
        Binding("r", "process('restart')", "Restart", id="dash.restart"),
        Binding("x", "process('stop')", "Stop", id="dash.stop"),
        Binding("s", "process('start')", "Start", id="dash.start"),
        Binding("n", "run_now", "Run now", id="dash.run_now"),
        Binding("p", "pause", "Pause", id="dash.pause"),
        Binding("u", "resume", "Resume", id="dash.resume"),
        Binding("l", "log", "Log", id="dash.log"),
        Binding("f", "cycle_filter", "Filter", id="dash.filter"),
        Binding("o", "sort", "Sort", id="dash.sort"),
        Binding("a", "accept_positions", "Accept positions", id="dash.accept_positions"),
        Binding("O", "sort(True)", "Reverse sort", id="dash.sort_reverse", show=False),
        Binding("1", "panel('processes')", "Processes", id="dash.panel1", show=False),
        Binding("2", "panel('positions')", "Positions", id="dash.panel2", show=False),
        Binding("3", "panel('incidents')", "Incidents", id="dash.panel3", show=False),
        Binding("4", "panel('feed')", "Orders & fills", id="dash.panel4", show=False),
        Binding("5", "panel('signals')", "Signals", id="dash.panel5", show=False),
        Binding("6", "panel('history')", "History", id="dash.panel6", show=False),
    ]

    account_filter: reactive[str | None] = reactive(None)
    panel: reactive[str] = reactive("processes")

    def __init__(self, data: DashboardData | DataOpener, *, refresh_s: float = 1.0,
                 on_exit: Callable[[DashboardData], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self._data: DashboardData | None = data if isinstance(data, DashboardData) else None
        self._opener = None if isinstance(data, DashboardData) else data
        self._on_exit = on_exit
        self.refresh_s = refresh_s
        self.state: DashboardState | None = None
        self.stale: StaleInfo | None = None
        self._dirty = False  # a state arrived while a modal was open
        self._rendered_at = float("-inf")  # monotonic time of the last render_state
        self.loads = 0  # completed loads (tests wait on it)
        # Tall but narrow terminals show processes above one other panel: this one.
        self._lower = "positions"

    @property
    def data(self) -> DashboardData:
        assert self._data is not None, "data not opened yet"
        return self._data

    def now(self) -> datetime:
        return self._data.now() if self._data is not None else utcnow()

    # --- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Banner("loading…", id="banner", markup=False)
        yield AccountsTable(id="accounts")
        yield Static("", id="panel-tabs", markup=False)
        with Container(id="panels"):
            yield ProcessesTable(id="processes", classes="panel -active")
            yield PositionsTable(id="positions", classes="panel -lower")
            yield IncidentsTable(id="incidents", classes="panel")
            yield FeedTable(id="feed", classes="panel")
            yield SignalsTable(id="signals", classes="panel")
            # Loads its own data while shown (tui/widgets/history.py), not on the poll.
            yield HistoryView(self.history_inputs, id="history", classes="panel")
        yield DashFooter(compact=True)

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(self.refresh_s, self._poll_tick)
        self.set_interval(1.0, self._clock_tick)

    async def on_unmount(self) -> None:
        if self._on_exit is not None and self._data is not None:
            await self._on_exit(self._data)

    # --- data -------------------------------------------------------------------------------

    @property
    def modal_open(self) -> bool:
        """A modal screen is on top. Also True while the app shuts down (its screen stack
        already empty), so a clock tick or a poll landing then renders nothing."""
        try:
            top = self.screen
        except ScreenStackError:
            return True
        return isinstance(top, ModalScreen)

    def _poll_tick(self) -> None:
        running = any(w.group == "poll" and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                      for w in self.workers)
        if not running and not self.modal_open:
            self.poll()

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def poll(self) -> None:
        if self._data is None:
            assert self._opener is not None
            self._data = await self._opener()
        self.post_message(StateLoaded(await self.data.load()))

    def on_state_loaded(self, message: StateLoaded) -> None:
        self.state = message.state
        self.stale = None
        self.loads += 1
        if self.modal_open:
            self._dirty = True
        else:
            self.render_state()

    def _clock_tick(self) -> None:
        # Ages move on between polls; a poll that landed within the last 3/4 s has just
        # rendered them (at a 1 s poll this pass is mostly skipped: half the idle CPU).
        recent = time.monotonic() - self._rendered_at < 0.75
        if self.state is not None and not self.modal_open and not recent:
            self.render_state(data_changed=False)

    def on_screen_resume(self) -> None:
        if self._dirty and not self.modal_open:
            self._dirty = False
            self.render_state()

    def render_state(self, data_changed: bool = True) -> None:
        """Show `self.state` at the current clock. A clock-only pass skips the tables whose
        cells do not depend on the time (accounts, feed)."""
        if self.state is None:
            return
        try:
            banner = self.query_one(Banner)
        except NoMatches:  # a poll landing while the app shuts down: its widgets are gone
            return
        self._rendered_at = time.monotonic()
        now = self.now()
        state = self.state.filtered(self.account_filter)
        banner.show(state, now, self.account_filter, self.stale)
        # Render only what is visible: a hidden panel catches up when it is shown.
        processes = self.query_one(ProcessesTable)
        if processes.display:
            processes.show(state.processes, now)
            title = "Processes" + processes_note(state)
            if processes.border_title != title:
                processes.border_title = title
        positions = self.query_one(PositionsTable)
        if positions.display:
            positions.show(state.positions, now)
        incidents = self.query_one(IncidentsTable)
        if incidents.display:
            incidents.show(state.incidents, now)
        if data_changed:
            self.query_one(AccountsTable).show(state.accounts)
        feed = self.query_one(FeedTable)
        if feed.display and (data_changed or not feed.row_count):
            feed.show(state.feed)
        signals = self.query_one(SignalsTable)
        if signals.display:
            signals.show(state.signals, now)
        self._show_tabs(state)

    def _show_tabs(self, state: DashboardState) -> None:
        n_open = sum(1 for i in state.incidents if i.alarming)
        n_acked = sum(1 for i in state.incidents if i.is_open and i.acked)
        counts = ", ".join(([f"{n_open} open"] if n_open else [])
                           + ([f"{n_acked} acked"] if n_acked else []))
        labels = {"processes": "Processes", "positions": f"Positions ({len(state.positions)})",
                  "incidents": f"Incidents ({counts})" if counts else "Incidents",
                  "feed": "Orders & fills", "history": "History",
                  "signals": _signals_label(state)}
        # A tab's number is its key: the panels need not be numbered in order.
        keys = {b.action: b.key for b in self.BINDINGS if isinstance(b, Binding)}
        tabs = self.query_one("#panel-tabs", Static)

        def strip(names: dict[str, str]) -> str:
            return " ".join(f"[{i} {names[k]}]" if k == self.panel else f" {i} {names[k]} "
                            for i, k in ((keys.get(f"panel('{k}')", "?"), k)
                                         for k, _ in PANELS))
        text = strip(labels)
        if len(text) > (tabs.size.width or self.size.width) - 2:  # 80 columns: short words
            text = strip(_short_labels(state, n_open))
        tabs.update(text)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker errors land: a notice, and for the poll a stale marker."""
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        if error is not None:
            error = underlying(error)  # an outage: the driver's error it carries
        text = f"{type(error).__name__}: {error}"[:300]
        log.error("worker %s failed: %s", event.worker.name, text)
        if event.worker.group == "poll":
            if self.stale is None:
                self.stale = StaleInfo(self.now(), text)
            if self.state is not None and not self.modal_open:
                self.query_one(Banner).show(self.state.filtered(self.account_filter),
                                            self.now(), self.account_filter, self.stale)
            self.notify(f"refresh failed: {text}", severity="error", timeout=4)
        else:
            self.notify(f"{event.worker.name} failed: {text}", severity="error", timeout=8)

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "error")
        self.poll()

    def on_positions_accepted(self, message: PositionsAccepted) -> None:
        if message.record is not None:
            self.notify(control.accept_summary(message.record), timeout=10)
        else:
            manager = program_name("position-manager", message.account)
            self.notify(f"{message.account}: requested; the position manager has not applied "
                        f"it within {message.waited_s:g}s — is {manager} running? It applies "
                        "the request at its next sync.", severity="warning", timeout=15)
        self.poll()  # the drift block it lifts shows at once

    def on_incident_acknowledged(self, message: IncidentAcknowledged) -> None:
        self.notify(message.text, severity="information" if message.acked else "warning",
                    timeout=8)
        self.poll()  # the row turns acked and the header's alarm count drops at once

    # --- selection --------------------------------------------------------------------------

    def selected_process(self) -> ProcessRow | None:
        return self.query_one(ProcessesTable).selected

    def history_inputs(self) -> HistoryInputs | None:
        """What the History tab loads with: the last state read, filter applied."""
        state = None if self.state is None else self.state.filtered(self.account_filter)
        return inputs_from(self._data, state, self.now)

    def selected_incident(self) -> IncidentRow | None:
        return self.query_one(IncidentsTable).selected

    def account_names(self) -> list[str]:
        return sorted(self.data.config.enabled_accounts()) if self._data else []

    def selected_account(self) -> str | None:
        """The account the focused row belongs to; else the filter; else the highlighted
        account row."""
        focused = self.focused
        if isinstance(focused, ProcessesTable | PositionsTable) and focused.selected:
            acct = focused.selected.account
            if acct:
                return acct
        if self.account_filter:
            return self.account_filter
        row = self.query_one(AccountsTable).selected
        return row.name if row else None

    # --- actions ----------------------------------------------------------------------------

    def _supervisor(self) -> SupervisorClient:
        return self.data.supervisor

    def _no_supervisord(self) -> bool:
        """In the orchestrated layout there is no supervisord to control or read logs from:
        say so instead of failing against a socket that does not exist."""
        if self.state is None or self.state.layout == "supervisord":
            return False
        self.notify("orchestrated layout: no supervisord here; restart a role through its "
                    "orchestrator (ECS service, Kubernetes deployment), read its logs there",
                    severity="warning", timeout=8)
        return True

    def action_process(self, what: control.ProcessAction) -> None:
        proc = self.selected_process()
        if proc is None:
            self.notify("no process selected", severity="warning")
            return
        if self._no_supervisord():
            return
        if what == "start":
            self._process_worker("start", proc.qualified)
            return
        detail = {"restart": "It is stopped (SIGTERM, then SIGKILL after stopwaitsecs) "
                             "and started again.",
                  "stop": "It stays stopped until started again (supervisord will not "
                          "restart it)."}[what]

        def answered(yes: bool | None) -> None:
            if yes:
                self._process_worker(what, proc.qualified)

        self.push_screen(ConfirmScreen(f"{what.capitalize()} {proc.name}?", detail), answered)

    @work(group="control", exit_on_error=False, name="process control")
    async def _process_worker(self, what: control.ProcessAction, qualified: str) -> None:
        self.notify(f"{what} {qualified}…", timeout=2)
        self.post_message(ActionDone(await control.process_action(self._supervisor(), what,
                                                                  qualified)))

    def action_run_now(self) -> None:
        proc = self.selected_process()
        if proc is None or proc.role not in ("dispatcher", "position-manager", "stream",
                                             "signal-engine"):
            self.notify("select a role process (dispatcher, position-manager, stream, "
                        "signal-engine)", severity="warning")
            return
        self._run_now_worker(proc.account, proc.role, proc.name)

    @work(group="control", exit_on_error=False, name="run now")
    async def _run_now_worker(self, account: str | None, role: str, name: str) -> None:
        await control.run_now(self.data.store, account, role)
        self.post_message(ActionDone(f"asked {name} to run now"))

    def action_pause(self) -> None:
        """`p`: pick the mode (halt, reduce-only, flatten, flatten-all), then confirm."""
        acct = self.selected_account()
        if acct is None:
            self.notify("no account selected", severity="warning")
            return
        row = next((a for a in self.state.accounts if a.name == acct), None) \
            if self.state is not None else None

        def picked(mode: str | None) -> None:
            if mode is not None:
                self.pause_account(acct, mode)

        self.push_screen(PauseModeScreen(acct, row.kill_switch if row else "off"), picked)

    def action_resume(self) -> None:
        acct = self.selected_account()
        if acct is None:
            self.notify("no account selected", severity="warning")
            return
        self.resume_account(acct)

    def pause_account(self, account: str, mode: str) -> None:
        ks = KillSwitch(mode)
        if ks is KillSwitch.FLATTEN:
            self._confirm_kill(account, ks, f"Flatten {account}: managed positions only?",
                               FLATTEN_MANAGED_TEXT, yes_label="Close managed")
            return
        if ks is KillSwitch.FLATTEN_ALL:
            self._confirm_kill(account, ks, f"Flatten {account}: EVERYTHING, external "
                               "positions included?", FLATTEN_ALL_TEXT,
                               yes_label="Close everything")
            return
        meaning = {KillSwitch.HALT: "No new entries; exits still allowed.",
                   KillSwitch.REDUCE_ONLY: "Only orders that reduce a position; open entry "
                                           "orders are canceled."}.get(ks, "")
        self._confirm_kill(account, ks, f"Pause {account} ({mode})?", meaning)

    def resume_account(self, account: str) -> None:
        self._confirm_kill(account, KillSwitch.OFF, f"Resume trading on {account}?",
                           "Releases the kill switch: the dispatcher takes new entries.")

    def _confirm_kill(self, account: str, mode: KillSwitch, question: str, detail: str,
                      yes_label: str = "Yes") -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._kill_worker(account, mode)

        self.push_screen(ConfirmScreen(question, detail, yes_label=yes_label), answered)

    @work(group="control", exit_on_error=False, name="kill switch")
    async def _kill_worker(self, account: str, mode: KillSwitch) -> None:
        before = await control.set_kill_switch(self.data.store, account, mode)
        self.post_message(ActionDone(f"{account}: kill switch {before.value} -> {mode.value}"))

    def action_accept_positions(self) -> None:
        acct = self.selected_account()
        if acct is None:
            self.notify("no account selected", severity="warning")
            return
        self.accept_account(acct)

    def accept_account(self, account: str) -> None:
        """Ask first, showing the drift block as last read; then accept the broker's
        positions (as `ops positions accept`)."""
        state = self.state
        row = next((a for a in state.accounts if a.name == account), None) if state else None

        def answered(yes: bool | None) -> None:
            if yes:
                self._accept_worker(account)

        self.push_screen(AcceptPositionsScreen(
            account, row, database_reachable=state is None or state.database.reachable),
            answered)

    @work(group="control", exit_on_error=False, name="accept positions")
    async def _accept_worker(self, account: str) -> None:
        wait = control.ACCEPT_WAIT_S
        self.notify(f"{account}: accepting the broker's positions…", timeout=2)
        try:
            request_id, record = await control.accept_positions(self.data.store, account,
                                                                within_s=wait)
        except AcceptFailed as exc:
            self.post_message(ActionDone(f"{account}: {exc}", ok=False))
            return
        self.post_message(PositionsAccepted(account, request_id, record, wait))

    def action_show_incident(self) -> None:
        """Enter on the incidents panel: the highlighted incident in full."""
        row = self.selected_incident()
        if row is None:
            self.notify("no incident selected", severity="warning")
            return
        self.show_incident(row)

    def show_incident(self, row: IncidentRow) -> None:
        self.push_screen(IncidentScreen(row, self.data.incident, self.now))

    def action_show_detail(self) -> None:
        """Enter on positions or orders & fills: the highlighted row in full."""
        focused = self.focused
        if isinstance(focused, PositionsTable) and focused.selected is not None:
            row = focused.selected
            self.push_screen(DetailScreen(f"position · {row.account} · {row.description}",
                                          position_lines(row, self.now())))
        elif isinstance(focused, FeedTable) and focused.selected is not None:
            item = focused.selected
            self.push_screen(DetailScreen(f"{item.kind} · {item.account} · {item.symbol}",
                                          feed_lines(item)))
        else:
            self.notify("no row selected", severity="warning")

    def action_show_signal(self) -> None:
        """Enter on the signals panel: the highlighted signal in full, as `ops signal show`."""
        row = self.query_one(SignalsTable).selected
        if row is None:
            self.notify("no signal selected", severity="warning")
            return
        self.push_screen(DetailScreen(f"signal {row.id} · {row.account} · {row.symbol}",
                                      describe_signal(row, self.now())))

    def action_ack_incident(self) -> None:
        """`a` on the incidents panel: acknowledge the highlighted incident (asks first)."""
        row = self.selected_incident()
        if row is None:
            self.notify("no incident selected", severity="warning")
            return
        self.acknowledge_incident(row)

    def acknowledge_incident(self, row: IncidentRow) -> None:
        if not row.is_open:
            self.notify(f"{row.kind} on {row.where} is closed: nothing to acknowledge",
                        severity="warning")
            return
        if row.acked:
            self.notify(f"{row.kind} on {row.where} is already acknowledged by "
                        f"{row.acked_by or '?'}", severity="warning")
            return
        first = row.detail.splitlines()[0] if row.detail else ""
        detail = (f"{first[:180]}\n\nIt stays listed, marked acked by {control.operator()}, "
                  "but no longer counts as an open incident in the header or makes `ops "
                  "status` degraded. It still closes by itself when its condition clears.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._ack_worker(row.id)

        self.push_screen(ConfirmScreen(f"Acknowledge {row.kind} on {row.where}?", detail,
                                       yes_label="Acknowledge", no_label="Cancel"), answered)

    @work(group="control", exit_on_error=False, name="acknowledge incident")
    async def _ack_worker(self, incident_id: str) -> None:
        acked, text = await control.acknowledge_incident(self.data.store, incident_id,
                                                         at=self.now())
        self.post_message(IncidentAcknowledged(incident_id, acked, text))

    def action_log(self) -> None:
        proc = self.selected_process()
        if proc is None:
            self.notify("no process selected", severity="warning")
            return
        if self._no_supervisord():
            return
        self.push_screen(LogTailScreen(self._supervisor(), proc.qualified))

    def set_filter(self, account: str | None) -> None:
        self.account_filter = account

    def action_cycle_filter(self) -> None:
        names: list[str | None] = [None, *self.account_names()]
        i = names.index(self.account_filter) if self.account_filter in names else 0
        self.account_filter = names[(i + 1) % len(names)]

    def watch_account_filter(self) -> None:
        self.render_state()

    def action_sort(self, reverse: bool = False) -> None:
        self.panel = "positions"
        self.query_one(PositionsTable).cycle_sort(reverse)

    def action_panel(self, name: str) -> None:
        self.panel = name

    def watch_panel(self, name: str) -> None:
        if name != "processes":
            self._lower = name
        for key, _ in PANELS:
            panel = self.query_one(f"#{key}")
            panel.set_class(key == name, "-active")
            panel.set_class(key == self._lower, "-lower")
        self.query_one("#panels").set_class(name == "history", "-history")
        self.query_one("#panels").set_class(name == "signals", "-signals")
        table = self.query_one(f"#{name}", Widget)
        table.focus()
        # Styles of the newly shown panel apply on the next refresh; render then.
        self.call_after_refresh(self.render_state)

    def action_help(self) -> None:
        bindings = [b for b in self.BINDINGS if isinstance(b, Binding)]
        panel = [b for b in IncidentsTable.BINDINGS if isinstance(b, Binding)]
        history = [b for b in HistoryView.BINDINGS if isinstance(b, Binding)]
        signals = [b for b in SignalsTable.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(bindings, {"On the incidents panel (3)": panel,
                                               "On the signals panel (5)": signals,
                                               "On the history panel (6)": history}))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # Tab between panels keeps the tab strip (and the compact layout) in step.
        key = event.widget.id
        if key in dict(PANELS) and key != self.panel:
            self.panel = key


def _short_labels(state: DashboardState, n_open: int) -> dict[str, str]:
    """The tab strip's words when the full ones do not fit (80 columns): counts kept."""
    rows = state.signals or ()
    waiting = sum(1 for s in rows if s.state in ("queued", "unknown"))
    refused = sum(1 for s in rows if s.state == "rejected")
    return {"processes": "Procs", "positions": f"Pos {len(state.positions)}",
            "incidents": f"Inc {n_open} open" if n_open else "Inc", "feed": "Orders",
            "signals": "Sig" + (f" {waiting}q" if waiting else "")
                       + (f" {refused}rej" if refused else ""),
            "history": "History"}


def _signals_label(state: DashboardState) -> str:
    """'Signals', with how many wait or were refused among those shown."""
    rows = state.signals or ()
    queued = sum(1 for s in rows if s.state in ("queued", "unknown"))
    rejected = sum(1 for s in rows if s.state == "rejected")
    counts = ([f"{queued} queued"] if queued else []) + \
        ([f"{rejected} rejected"] if rejected else [])
    return f"Signals ({', '.join(counts)})" if counts else "Signals"
