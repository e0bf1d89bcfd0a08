"""The incidents panel's own keys, against a real Postgres: Enter opens the incident in
full (every field `ops incidents show` prints, scrollable, Escape closes); `a` on the
focused panel acknowledges the highlighted incident after a confirmation, recorded as
`dash:<user>`, after which it renders muted ("acked by ...") and leaves the header's alarm
count. Elsewhere `a` still accepts the broker's positions; both are in the footer and help.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from textual.containers import VerticalScroll
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Static

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import StorageUnavailable, Store
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import T
from tests.tui.fixtures import write_fixture
from tests.tui.helpers import cells, column, until
from tests.tui.test_accept import Notes
from tui.app import Dashboard
from tui.commands import palette_entries
from tui.data import DashboardData
from tui.messages import IncidentAcknowledged
from tui.screens.accept import AcceptPositionsScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.incident import IncidentScreen
from tui.text import render_text
from tui.widgets.accounts import AccountsTable
from tui.widgets.banner import Banner
from tui.widgets.incidents import IncidentsTable

#: A long detail: the detail screen must scroll to show its end.
LONG = "\n".join([f"config file /etc/ops/ops.toml is invalid (line {i}): bad value"
                  for i in range(1, 60)] + ["THE LAST LINE"])


async def _seeded(store: Store, env: RuntimeEnv, config: Config) -> tuple[Dashboard, str]:
    await write_fixture(store, T)
    for proc in ("large-dispatcher", "large-stream"):
        cfg = await store.open_incident("config-invalid", detail=LONG, process=proc,
                                        dedupe_key="config-invalid:/etc/ops/ops.toml",
                                        at=T - timedelta(minutes=10))
    data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                         lambda: T)
    return Dashboard(data, refresh_s=3600), cfg  # loads only when the test or an action asks


async def _incidents(pilot: Pilot[None], app: Dashboard) -> IncidentsTable:
    await until(pilot, lambda: app.loads >= 1, what="first load")
    await pilot.press("3")
    table = app.query_one(IncidentsTable)
    await until(pilot, lambda: table.row_count == 3, what="incidents shown")
    assert app.focused is table
    return table


async def _highlight(pilot: Pilot[None], table: IncidentsTable, key: str) -> None:
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()
    assert table.selected is not None and table.selected.id == key


def _detail(app: Dashboard) -> IncidentScreen | None:
    screen = app.screen
    return screen if isinstance(screen, IncidentScreen) else None


async def _drift_id(store: Store) -> str:
    return str(await store.pool.fetchval(
        "SELECT id::text FROM incidents WHERE dedupe_key = 'drift:large'"))


async def test_enter_shows_the_incident_in_full(dash_env: RuntimeEnv, config: Config,
                                                ops_store: Store) -> None:
    app, cfg = await _seeded(ops_store, dash_env, config)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await _incidents(pilot, app)
        # Open ones first (oldest on top), then the closed one.
        assert column(table, "kind") == ["config-invalid", "position-drift", "stalled"]
        assert cells(table, cfg)["detail"].startswith("config file /etc/ops/ops.toml is "
                                                      "invalid (line 1)")  # the first line
        await _highlight(pilot, table, cfg)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, IncidentScreen), what="detail")
        detail = _detail(app)
        assert detail is not None
        await until(pilot, lambda: detail.loaded, what="the full record")
        screen = detail
        text = detail.text
        for expected in (f"id:           {cfg}", "kind:         config-invalid",
                         "state:        OPEN\n", "process:      large-dispatcher",
                         "seen by:      large-dispatcher, large-stream",
                         "dedupe key:   config-invalid:/etc/ops/ops.toml",
                         "opened:       2026-03-02 15:20:00Z (10m ago)",
                         "acknowledged: no", "ended:        still open (for 10m)",
                         "detail:\n  config file /etc/ops/ops.toml is invalid (line 1)",
                         "  THE LAST LINE"):
            assert expected in text, (expected, text)
        shown = str(screen.query_one("#incident-text", Static).render())
        assert "THE LAST LINE" in shown
        # Scrollable: the end of the detail is below the fold until scrolled to.
        box = screen.query_one("#incident-box", VerticalScroll)
        assert box.max_scroll_y > 0 and box.scroll_y == 0 and screen.focused is box
        await pilot.press("end")
        await until(pilot, lambda: box.scroll_y == box.max_scroll_y, what="scrolled")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, IncidentScreen), what="closed")
        assert app.focused is table

        # A closed one says how it ended.
        stalled = next(k for k, r in table.items.items() if r.kind == "stalled")
        await _highlight(pilot, table, stalled)
        await pilot.press("enter")
        await until(pilot, lambda: (d := _detail(app)) is not None and d.loaded,
                    what="closed incident")
        closed = _detail(app)
        assert closed is not None
        assert ("ended:        closed at 2026-03-02 13:35:00Z (1.9h ago) after 5m by test "
                "(no reason recorded)") in closed.text


async def test_the_detail_screen_keeps_the_row_when_postgres_is_away(
        dash_env: RuntimeEnv, config: Config, ops_store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app, cfg = await _seeded(ops_store, dash_env, config)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await _incidents(pilot, app)

        async def refused(incident_id: str) -> Any:
            # What the store raises when Postgres refuses the connection.
            cause = ConnectionRefusedError(111, "Connection refused")
            raise StorageUnavailable(str(cause)) from cause

        monkeypatch.setattr(app.data, "incident", refused)
        await _highlight(pilot, table, cfg)
        await pilot.press("enter")
        await until(pilot, lambda: (d := _detail(app)) is not None and
                    "showing what the dashboard last read" in d.text, what="fallback")
        screen = app.screen
        assert isinstance(screen, IncidentScreen) and not screen.loaded
        assert screen.text.startswith("⚠ showing what the dashboard last read: Postgres is "
                                      "unreachable")
        assert f"id:           {cfg}" in screen.text and "  THE LAST LINE" in screen.text


async def test_a_on_the_panel_acknowledges_after_asking(
        dash_env: RuntimeEnv, config: Config, ops_store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app, cfg = await _seeded(ops_store, dash_env, config)
    drift = await _drift_id(ops_store)
    posted: list[IncidentAcknowledged] = []

    def hook(message: Message) -> None:
        if isinstance(message, IncidentAcknowledged):
            posted.append(message)

    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        notes = Notes(app, monkeypatch)
        table = await _incidents(pilot, app)
        banner = app.query_one(Banner)
        assert "2 OPEN INCIDENTS" in str(banner.render())
        assert table.has_class("-open")
        await _highlight(pilot, table, drift)

        # Cancel writes nothing.
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        screen = app.screen
        assert isinstance(screen, ConfirmScreen)
        assert not isinstance(screen, AcceptPositionsScreen)
        assert screen.question == "Acknowledge position-drift on large?"
        assert screen.detail.startswith("MSFT broker 5 vs db 4\n\nIt stays listed")
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="closed")
        await pilot.pause(0.2)
        assert await ops_store.pool.fetchval(
            "SELECT count(*) FROM incidents WHERE acked_at IS NOT NULL") == 0

        # Confirm: recorded as dash:<user> at the dashboard's clock, and shown as acked.
        loads = app.loads
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: bool(posted), what="the acknowledgement")
        assert posted[0].incident_id == drift and posted[0].acked
        row = await ops_store.pool.fetchrow(
            "SELECT acked_by, acked_at, closed_at FROM incidents WHERE id = $1::text::uuid",
            drift)
        assert row["acked_by"].startswith("dash:") and row["acked_at"] == T
        assert row["closed_at"] is None
        assert notes.has(f"incident {drift[:8]} acknowledged by {row['acked_by']}")
        await until(pilot, lambda: app.loads > loads, what="reload")
        await until(pilot, lambda: cells(table, drift)["state"] == "○ acked", what="acked")
        assert cells(table, drift)["detail"] == f"acked by {row['acked_by']} · MSFT broker 5 " \
                                                "vs db 4"
        # Muted, unlike the open one; open ones first, then acked, then closed.
        assert table.get_cell(drift, "state").style != table.get_cell(cfg, "state").style
        assert table.get_cell(drift, "where").style == table.style_of("incident--acked")
        assert column(table, "kind") == ["config-invalid", "position-drift", "stalled"]
        assert column(table, "state") == ["● OPEN", "○ acked", "closed"]
        # The header counts only the unacknowledged one.
        summary = str(banner.render()).splitlines()[0]
        assert "1 OPEN INCIDENT, 1 acked" in summary
        assert str(table.border_subtitle) == "1 open · 1 acked · 1 closed (24h)"
        # `ops dash --once` says the same.
        assert app.state is not None
        once = render_text(app.state, T)
        assert "1 OPEN INCIDENT, 1 acked" in once
        assert f"acked by {row['acked_by']} · MSFT broker 5 vs db 4" in once

        # Acknowledging it again, or a closed one, asks nothing and says why.
        await pilot.press("a")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert notes.has("position-drift on large is already acknowledged by dash:")
        stalled = next(k for k, r in table.items.items() if r.kind == "stalled")
        await _highlight(pilot, table, stalled)
        await pilot.press("a")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert notes.has("stalled on tiny-stream is closed: nothing to acknowledge")

        # The last one acknowledged: no open incident left in the header.
        await _highlight(pilot, table, cfg)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: cells(table, cfg)["state"] == "○ acked", what="acked")
        assert "2 open incidents, all acked" in str(banner.render())
        assert not table.has_class("-open")


async def test_a_acknowledges_only_on_the_incidents_panel(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    app, _ = await _seeded(ops_store, dash_env, config)
    async with app.run_test(size=(160, 48)) as pilot:
        table = await _incidents(pilot, app)
        # Discoverable: the footer offers what `a` does where the focus is.
        active = app.screen.active_bindings
        assert active["a"].binding.id == "incidents.ack"
        assert active["a"].binding.description == "Acknowledge"
        assert active["enter"].binding.description == "Details"
        entries = [title for title, _, _ in palette_entries(app)]
        assert "Acknowledge incident config-invalid (large-dispatcher)" in entries
        assert "Show incident config-invalid (large-dispatcher)" in entries

        # Elsewhere `a` accepts the broker's positions, as before.
        accounts = app.query_one(AccountsTable)
        accounts.focus()
        await pilot.pause()
        assert app.screen.active_bindings["a"].binding.id == "dash.accept_positions"
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AcceptPositionsScreen),
                    what="accept dialog")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="closed")

        # Help lists both, the panel's keys under their own heading.
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        help_text = str(app.screen.query_one("#help-text", Static).render())
        assert "Accept positions" in help_text
        assert "On the incidents panel (3):" in help_text
        panel = help_text.split("On the incidents panel (3):")[1]
        assert "Details" in panel and "Acknowledge" in panel
        await pilot.press("escape")
        assert table.row_count == 3
