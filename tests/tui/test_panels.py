"""Each panel shows the right figures, read from a real Postgres through the real Store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import tui.data
from ops.commands.status import load_env_config
from ops.core.config import Config
from ops.runtime.config import remember_if_good
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.ownership import managed_quantities_of
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import CONFIG, T
from tests.tui.fixtures import OPTION, write_fixture
from tests.tui.helpers import cells, column, until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.screens.help import HelpScreen
from tui.text import render_text
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
        for _ in range(4):  # account -> symbol -> qty -> owner -> pl
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


#: The fixture's owners: AAPL bought by the pipeline, 3 of MSFT's 5 adopted, the option
#: and SPY opened by hand.
OWNERS = {"large/AAPL": "managed", f"large/{OPTION}": "external", "large/MSFT": "3m/2x",
          "tiny/SPY": "external"}


def _count_ownership_reads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, list[str]]]:
    """Every ownership query the dashboard sends: the accounts and symbols it asks for."""
    calls: list[dict[str, list[str]]] = []

    async def counting(pool: Any, wanted: Mapping[str, Iterable[str]],
                       as_of: Mapping[str, Any] | None = None,
                       ) -> dict[str, dict[str, Decimal]]:
        calls.append({a: sorted(symbols) for a, symbols in wanted.items()})
        return await managed_quantities_of(pool, wanted, as_of)

    monkeypatch.setattr(tui.data, "managed_quantities_of", counting)
    return calls


async def test_positions_say_who_owns_them(dash_env: RuntimeEnv, config: Config,
                                           ops_store: Store,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Owner column (issue 14.1): managed, external, or a mixed position's split, on
    screen at 80 columns; one ownership query per load for every account's positions;
    `ops dash --once` says the split in words."""
    await write_fixture(ops_store, T)
    calls = _count_ownership_reads(monkeypatch)
    app = Dashboard(_data(dash_env, config, ops_store), refresh_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.press("2")
        await pilot.pause()
        positions = app.query_one(PositionsTable)
        assert {k: cells(positions, k)["owner"] for k in positions.items} == OWNERS
        assert calls == [{"large": sorted(["AAPL", OPTION, "MSFT"]), "tiny": ["SPY"]}]
        # Readable on an 80-column screen, next to the quantity.
        header, *rows = [positions.render_line(y).text for y in range(5)]
        assert header.split()[:4] == ["Account▲", "Symbol", "Qty", "Owner"], header
        at, end = header.index("Owner"), header.index("Unreal P&L")
        assert [r[at:end].strip() for r in rows] == [
            "managed", "external", "3m/2x", "external"], rows
        app.poll()
        await until(pilot, lambda: app.loads >= 2, what="second load")
        assert len(calls) == 2  # one per load, not one per symbol or account
        assert app.state is not None
        text = render_text(app.state, T)
    # The positions table's rows (the banner's lines above it may name a symbol too).
    rows = text.split("\nPOSITIONS", 1)[1].splitlines()
    msft = next(line for line in rows if "MSFT" in line)
    assert "3 managed / 2 external" in msft, text
    assert "external" in next(line for line in rows if "SPY" in line)


async def test_manage_external_from_the_last_good_config(
        ops_env: RuntimeEnv, ops_store: Store, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`manage_external = true` (large) makes every position of the account managed,
    without asking the store; read from the last good config while the file on disk is
    invalid, the config the dashboard works from."""
    conf = tmp_path / "edited.toml"
    good = CONFIG.read_text()
    assert good.count("manage_external = false") == 2  # large's first, then tiny's
    conf.write_text(good.replace("manage_external = false", "manage_external = true", 1))
    env = RuntimeEnv(config_path=conf, home=ops_env.home, database_url=ops_env.database_url)
    remember_if_good(conf, env.run_dir)
    conf.write_text(conf.read_text().replace("stream_check_s = 5", "stream_check_s = -5", 1))
    loaded = load_env_config(env)
    assert not isinstance(loaded, str), loaded
    _, config = loaded
    assert config.accounts["large"].manage_external
    await write_fixture(ops_store, T)
    calls = _count_ownership_reads(monkeypatch)
    state = await _data(env, config, ops_store).load()
    assert {p.key: p.owner for p in state.positions} == {
        "large/AAPL": "managed", f"large/{OPTION}": "managed", "large/MSFT": "managed",
        "tiny/SPY": "external"}
    assert calls == [{"tiny": ["SPY"]}]
    assert any("config file is invalid" in p for p in state.problems), state.problems
