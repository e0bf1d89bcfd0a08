"""The History tab on screen (key 6): the rendered run-slot strip shows a 6-hour hole as
a hole (blank cells) at 80x24, late and failed slots marked; full width on a large
terminal; zoom; the account filter; an outage keeps the last view; the sparklines hold the
account series. Real Postgres, frozen clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from textual.widgets import Static

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.embedded import EmbeddedPostgres
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import CONFIG, T
from tests.tui.fixtures import write_fixture
from tests.tui.helpers import until
from tests.tui.test_history import DAY, seed_runs, seed_tiny_equity
from tui.app import Dashboard
from tui.data import DashboardData
from tui.history import HistoryData
from tui.widgets.history import HistoryView
from tui.widgets.timeline import GLYPHS, Timeline


def _data(env: RuntimeEnv, config: Config, store: Store) -> DashboardData:
    return DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                         lambda: T)


def _strip(timeline: Timeline, label: str) -> str:
    """The strip of the lane whose label starts with `label`, as rendered."""
    text = timeline.render().plain.splitlines()
    line = next(ln for ln in text if ln.startswith(label))
    return line[timeline.label_width(timeline.content_region.width) + 1:]


async def test_rendered_strip_at_80x24_has_the_hole(dash_env: RuntimeEnv, config: Config,
                                                    ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    await seed_runs(ops_store)
    app = Dashboard(_data(dash_env, config, ops_store), refresh_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        view = app.query_one(HistoryView)
        assert view.loads == 0  # hidden: history is not read
        await pilot.press("6")
        await until(pilot, lambda: view.loads >= 1, what="history load")
        await pilot.pause()
        assert view.display and app.panel == "history"
        runs = app.query_one("#history-runs", Timeline)
        strip = _strip(runs, "large-position")
        cols = runs.strip_columns(runs.content_region.width)
        assert len(strip) == cols and cols >= 40
        # One hole (blank cells), a quarter of the day long, 6 h..14 h before the end.
        holes = [i for i, c in enumerate(strip) if c == GLYPHS["missed"]]
        assert holes == list(range(holes[0], holes[-1] + 1))
        assert abs(len(holes) - cols * 6 / 24) <= 1.5
        assert abs(holes[0] - cols * 10 / 24) <= 1.5
        assert GLYPHS["late"] in strip and GLYPHS["failed"] in strip
        assert strip.startswith(GLYPHS["none"])  # no ledger before T-20h
        # The fixture's processes ran a second ago: a short ok run at the end.
        assert _strip(runs, "large-dispatcher").endswith(GLYPHS["ok"])

        # z zooms: 24 h -> 1 h, reloaded.
        await pilot.press("z")
        await until(pilot, lambda: view.loads >= 2 and view.state is not None
                    and view.state.span == timedelta(hours=1), what="zoomed load")
        await pilot.pause()
        assert GLYPHS["missed"] not in _strip(runs, "large-position")
        assert "last 1h" in str(view.border_title)


async def test_wide_screen_shows_history_full_width(dash_env: RuntimeEnv, config: Config,
                                                    ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    await seed_runs(ops_store)
    app = Dashboard(_data(dash_env, config, ops_store), refresh_s=3600)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        view = app.query_one(HistoryView)
        assert not view.display  # the 2x2 grid does not include it
        await pilot.press("6")
        await until(pilot, lambda: view.loads >= 1, what="history load")
        await pilot.pause()
        assert view.size.width >= 150
        runs = app.query_one("#history-runs", Timeline)
        assert runs.strip_columns(runs.content_region.width) >= 120
        await pilot.press("1")
        await pilot.pause()
        assert not view.display


async def test_sparklines_hold_the_account_series(dash_env: RuntimeEnv, config: Config,
                                                  ops_store: Store) -> None:
    await seed_tiny_equity(ops_store)
    state = await HistoryData(ops_store, lambda: T).load(DAY, [], ["large", "tiny"])
    tiny = state.accounts[1]
    # On screen: the sparkline holds the series, the figures and the hole in words.
    app = Dashboard(_data(dash_env, config, ops_store), refresh_s=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.press("6")
        view = app.query_one(HistoryView)
        await until(pilot, lambda: view.loads >= 1 and bool(view.query("#history-account-tiny")),
                    what="history load")
        await until(pilot, lambda: bool(view.account_box("tiny").equity.data),
                    what="sparkline data")
        box = view.account_box("tiny")
        assert list(box.equity.data or []) == list(tiny.equity)
        assert list(box.day_pl.data or []) == list(tiny.day_pl)
        text = box.pnl_text
        assert "NO DATA 03:29–09:31 (6h02)" in text, text
        assert "realised today +0.00" in text


async def test_filter_reloads_and_an_outage_keeps_the_last_view(
        pg_dedicated: EmbeddedPostgres, pg_home: Path, config: Config) -> None:
    env = RuntimeEnv(config_path=CONFIG, home=pg_home / "ops", database_url=pg_dedicated.url())
    async with await Store.open(env, process="fixture") as store:
        await write_fixture(store, T)
        await seed_runs(store)
    async with await Store.open(env, process="ops-dash") as store:
        app = Dashboard(_data(env, config, store), refresh_s=3600)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loads >= 1, what="first load")
            await pilot.press("6")
            view = app.query_one(HistoryView)
            runs = app.query_one("#history-runs", Timeline)
            await until(pilot, lambda: view.loads >= 1, what="history load")
            assert "tiny-dispatcher" in [lane.label for lane in runs.lanes]
            # The account filter applies to the history too, without waiting for a refresh.
            await pilot.press("f")  # all -> large
            await until(pilot, lambda: view.loads >= 2, what="filtered load")
            await pilot.pause()
            labels = [lane.label for lane in runs.lanes]
            assert "large-position-manager" in labels and not any(
                label.startswith("tiny-") for label in labels), labels

            await asyncio.to_thread(pg_dedicated.stop, mode="fast")
            view.reload()
            await until(pilot, lambda: view.loads >= 3, what="load during the outage")
            await pilot.pause()
            assert view.error is not None and "Postgres unreachable" in view.error
            note = str(app.query_one("#history-note", Static).render())
            assert "showing what was read at 15:30:00" in note, note
            # The strips read before the outage stay on screen.
            assert GLYPHS["missed"] in _strip(runs, "large-position")
