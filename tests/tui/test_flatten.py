"""The dashboard's flatten control (issue 14.1): the palette offers "managed only" and
"everything", each behind its own confirmation naming what it closes; "n" writes nothing,
"y" writes the same kill switch `ops pause --mode flatten|flatten-all` writes."""

from __future__ import annotations

from textual.widgets import Button, Label

from ops.commands.control import read_kill_switch
from ops.core.config import Config
from ops.core.models import KillSwitch
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient
from tests.support import eventually
from tests.tui.conftest import T
from tests.tui.fixtures import write_fixture
from tests.tui.helpers import until
from tui.app import Dashboard
from tui.commands import palette_entries
from tui.data import DashboardData
from tui.screens.confirm import ConfirmScreen


async def _mode(store: Store, want: KillSwitch) -> None:
    async def reached() -> bool:
        return await read_kill_switch(store, "large") == want

    await eventually(reached, f"the kill switch {want.value}", 10)


async def test_flatten_managed_only_and_everything_each_ask_first(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    data = DashboardData(dash_env, config, ops_store,
                         SupervisorClient.for_env(dash_env, timeout_s=1), lambda: T)
    app = Dashboard(data, refresh_s=3600)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        titles = [title for title, _, _ in palette_entries(app)]
        assert "Flatten large: managed only" in titles
        assert "Flatten large: everything" in titles
        assert "Pause large (flatten)" not in titles  # replaced by the two above

        # Managed only: says external positions are left alone; "n" writes nothing.
        app.pause_account("large", "flatten")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen)
                    and bool(app.screen.query("#yes")), what="confirm")
        screen = app.screen
        assert "managed positions only" in str(screen.query_one("#confirm-question", Label)
                                               .render())
        assert "left untouched" in str(screen.query_one("#confirm-detail", Label).render())
        assert "Close managed" in str(screen.query_one("#yes", Button).label)
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="no")
        assert await read_kill_switch(ops_store, "large") is KillSwitch.OFF
        app.pause_account("large", "flatten")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await _mode(ops_store, KillSwitch.FLATTEN)

        # Everything: its own, louder question.
        app.pause_account("large", "flatten-all")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen)
                    and bool(app.screen.query("#yes")), what="confirm")
        screen = app.screen
        question = str(screen.query_one("#confirm-question", Label).render())
        assert "EVERYTHING" in question and "external positions included" in question
        detail = str(screen.query_one("#confirm-detail", Label).render())
        assert "EVERY POSITION IS CLOSED" in detail and "managed only" in detail
        assert "Close everything" in str(screen.query_one("#yes", Button).label)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert await read_kill_switch(ops_store, "large") is KillSwitch.FLATTEN
        app.pause_account("large", "flatten-all")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await _mode(ops_store, KillSwitch.FLATTEN_ALL)
