"""Enter on positions and on orders & fills: the highlighted row in full, for the columns a
narrow screen cuts off (real Postgres through the real Store, frozen clock)."""

from __future__ import annotations

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import T
from tests.tui.fixtures import OPTION, write_fixture
from tests.tui.helpers import until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.screens.detail import DetailScreen
from tui.widgets.feed import FeedTable
from tui.widgets.positions import PositionsTable


async def test_enter_shows_a_position_and_a_fill_in_full(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    app = Dashboard(DashboardData(dash_env, config, ops_store,
                                  SupervisorClient.for_env(dash_env, timeout_s=1), lambda: T))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.press("2")
        positions = app.query_one(PositionsTable)
        await until(pilot, lambda: positions.row_count == 4, what="positions shown")
        await pilot.press("down")  # AAPL -> the option contract
        assert positions.selected is not None and positions.selected.symbol == OPTION
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        lines = screen.text.splitlines()
        assert "symbol:         " + OPTION in lines
        assert "what:           AAPL 2026-06-19 190 call" in lines
        assert "owner:          external (shown and counted, never sold by exit rules)" \
            in lines
        assert "unrealised P&L: +140.00" in lines
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, DetailScreen), what="closed")

        await pilot.press("4")
        feed = app.query_one(FeedTable)
        await until(pilot, lambda: feed.row_count > 0, what="feed shown")
        fill = next(k for k, r in feed.items.items() if r.kind == "fill")
        feed.move_cursor(row=feed.get_row_index(fill))
        await pilot.pause()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), what="feed detail")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        lines = screen.text.splitlines()
        assert "what:           fill" in lines
        assert "size:           10" in lines and "price:          180.00" in lines
        assert "time:           2026-03-02 15:29:30.000Z" in lines
