"""Each panel shows the right figures, read from a real Postgres through the real Store."""

from __future__ import annotations

from datetime import timedelta

from ops.config import Config
from ops.env import RuntimeEnv
from ops.store import Store
from ops.supervisor import SupervisorClient
from tests.tui.conftest import T
from tests.tui.fixtures import OPTION, write_fixture
from tests.tui.helpers import cells, column, until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.screens.help import HelpScreen
from tui.widgets.accounts import AccountsTable
from tui.widgets.banner import Banner
from tui.widgets.feed import FeedTable
from tui.widgets.incidents import IncidentsTable
from tui.widgets.positions import PositionsTable
from tui.widgets.processes import ProcessesTable


def _data(env: RuntimeEnv, config: Config, store: Store) -> DashboardData:
    return DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                         lambda: T)


async def test_every_panel_shows_the_fixture(dash_env: RuntimeEnv, config: Config,
                                             ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    app = Dashboard(_data(dash_env, config, ops_store))
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause()

        accounts = app.query_one(AccountsTable)
        large = cells(accounts, "large")
        assert (large["equity"], large["day_pl"], large["cash"], large["bp"], large["pos"],
                large["kill"], large["recon"], large["number"]) == (
            "100,250", "+250.50", "50,125", "200,501", "3", "off", "✓",
            "PASIM0000001")
        tiny = cells(accounts, "tiny")
        assert (tiny["day_pl"], tiny["kill"], tiny["pos"]) == ("-10.00", "■ HALT", "1")

        positions = app.query_one(PositionsTable)
        assert column(positions, "symbol") == [
            "AAPL", "AAPL 2026-06-19 190 call", "MSFT", "SPY"]
        opt = cells(positions, f"large/{OPTION}")
        assert (opt["qty"], opt["avg"], opt["last"], opt["value"], opt["pl"], opt["pct"],
                opt["held"]) == ("2", "3.50", "4.20", "840.00", "+140.00", "+20.00%", "42m")
        msft = cells(positions, "large/MSFT")
        assert (msft["pl"], msft["pct"]) == ("-50.00", "-2.50%")
        # Gains and losses are coloured (by the stylesheet), and differently.
        pl_cells = {k: positions.cell_style(k, "pl") for k in ("large/AAPL", "large/MSFT")}
        assert pl_cells["large/AAPL"] != pl_cells["large/MSFT"]

        processes = app.query_one(ProcessesTable)
        # No supervisord here: every process is down, and the banner says so plainly.
        assert set(column(processes, "state")) == {"NOT-RUNNING"}
        assert cells(processes, "large-dispatcher")["last_run"] == "1s"
        assert cells(processes, "large-dispatcher")["gap"] == "-"  # 1 s old, 2 s interval: not due
        banner = str(app.query_one(Banner).render())
        assert "SUPERVISORD NOT REACHABLE" in banner
        assert "4 positions" in banner and "1 OPEN INCIDENT" in banner
        assert "last fill 30s ago" in banner

        incidents = app.query_one(IncidentsTable)
        assert column(incidents, "kind") == ["position-drift", "stalled"]  # open first
        assert column(incidents, "state") == ["● OPEN", "closed"]
        assert column(incidents, "duration") == ["3m…", "5m"]

        feed = app.query_one(FeedTable)
        assert column(feed, "status")[:3] == ["rejected", "filled", "fill"] or \
            column(feed, "status")[:3] == ["rejected", "fill", "filled"]
        assert set(column(feed, "account")) == {"large", "tiny"}

        # Filter by account: only tiny's rows (shared processes stay).
        await pilot.press("f")  # all -> large
        await pilot.press("f")  # large -> tiny
        await pilot.pause()
        assert app.account_filter == "tiny"
        assert column(positions, "symbol") == ["SPY"]
        assert {a for a in column(processes, "account")} == {"tiny", "*"}
        assert list(accounts.items) == ["tiny"]


async def test_sorting_positions(dash_env: RuntimeEnv, config: Config,
                                 ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    app = Dashboard(_data(dash_env, config, ops_store))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        positions = app.query_one(PositionsTable)
        await pilot.press("2")
        for _ in range(3):  # account -> symbol -> qty -> pl
            await pilot.press("o")
        assert positions.sort_by == ("pl", False)
        assert column(positions, "pl") == ["-50.00", "-5.00", "+90.00", "+140.00"]
        await pilot.press("O")
        assert column(positions, "pl") == ["+140.00", "+90.00", "-5.00", "-50.00"]
        assert "sorted by Unreal P&L ↓" in str(positions.border_subtitle)


async def test_clock_ages_rows_without_io(dash_env: RuntimeEnv, config: Config,
                                          ops_store: Store) -> None:
    """The 1 s clock recomputes ages from stored timestamps: advancing the frozen clock
    moves the ages even when no new data is read."""
    await write_fixture(ops_store, T)
    now = [T]
    data = DashboardData(dash_env, config, ops_store,
                         SupervisorClient.for_env(dash_env, timeout_s=1), lambda: now[0])
    app = Dashboard(data, refresh_s=3600)  # no second poll during the test
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        processes = app.query_one(ProcessesTable)
        assert cells(processes, "large-stream")["heartbeat"] == "1s"
        now[0] = T + timedelta(seconds=90)
        await until(pilot, lambda: cells(processes, "large-stream")["heartbeat"] == "91s",
                    what="clock tick")
        assert app.loads == 1

        # Nothing renders while a modal is open; the screen catches up when it closes.
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        now[0] = T + timedelta(seconds=100)
        await pilot.pause(1.5)  # more than one clock tick: the table must not move
        assert cells(processes, "large-stream")["heartbeat"] == "91s"
        await pilot.press("escape")
        await until(pilot, lambda: cells(processes, "large-stream")["heartbeat"] == "101s",
                    what="catch up after the modal")
