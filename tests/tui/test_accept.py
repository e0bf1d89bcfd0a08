"""Accepting the broker's positions from the dashboard (`a`), against a real Postgres: the
confirmation shows the account's drift block (expected vs actual per symbol), cancelling
writes nothing, confirming records a `position_accepts` row as `dash:<user>` and says
whether the position manager applied it in time; once applied, the lifted block shows on
the next load."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.pilot import Pilot

import tui.control
from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.embedded import EmbeddedPostgres
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import CONFIG, T
from tests.tui.fixtures import write_drift_block, write_fixture
from tests.tui.helpers import cells, until
from tui.app import Dashboard
from tui.data import AccountRow, DashboardData, DriftBlock, DriftSymbol, drift_block
from tui.messages import PositionsAccepted
from tui.screens.accept import MAX_SYMBOLS, NO_DRIFT, AcceptPositionsScreen, accept_detail
from tui.widgets.accounts import AccountsTable


class Notes:
    """Every notice the app shows (its text), recorded as the app's `notify` is called."""

    def __init__(self, app: Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: list[str] = []
        original = app.notify

        def notify(message: str, **kw: Any) -> None:
            self.texts.append(message)
            original(message, **kw)

        monkeypatch.setattr(app, "notify", notify)

    def has(self, part: str) -> bool:
        return any(part in t for t in self.texts)


async def _seeded(store: Store, env: RuntimeEnv, config: Config) -> Dashboard:
    await write_fixture(store, T)
    await write_drift_block(store)
    data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                         lambda: T)
    return Dashboard(data, refresh_s=3600)  # loads only when the test or an action asks


async def _select(pilot: Pilot[None], app: Dashboard, account: str) -> AccountsTable:
    await until(pilot, lambda: app.loads >= 1, what="first load")
    table = app.query_one(AccountsTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(account))
    await pilot.pause()
    assert app.selected_account() == account
    return table


async def _open_dialog(pilot: Pilot[None], app: Dashboard) -> AcceptPositionsScreen:
    await pilot.press("a")
    await until(pilot, lambda: isinstance(app.screen, AcceptPositionsScreen), what="dialog")
    screen = app.screen
    assert isinstance(screen, AcceptPositionsScreen)
    return screen


async def _closed(pilot: Pilot[None], app: Dashboard) -> None:
    await until(pilot, lambda: not isinstance(app.screen, AcceptPositionsScreen),
                what="dialog closed")


async def _accepts(store: Store) -> list[Any]:
    return list(await store.pool.fetch("SELECT * FROM position_accepts ORDER BY requested_at"))


async def test_dialog_shows_the_drift_and_cancel_writes_nothing(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    app = await _seeded(ops_store, dash_env, config)
    async with app.run_test(size=(160, 48)) as pilot:
        accounts = await _select(pilot, app, "tiny")
        # The blocked account is marked on its row; the other is not.
        assert cells(accounts, "large")["pos"] == "DRIFT"
        assert cells(accounts, "tiny")["pos"] == "1"
        assert accounts.get_cell("large", "pos").style != accounts.get_cell("tiny", "pos").style

        # tiny has no drift block: the dialog says so (accepting stays allowed).
        screen = await _open_dialog(pilot, app)
        assert screen.account == "tiny"
        assert screen.question == "Accept the broker's positions for tiny?"
        assert NO_DRIFT in screen.detail
        await pilot.press("escape")
        await _closed(pilot, app)

        # large: expected (database) against actual (broker), per symbol.
        await _select(pilot, app, "large")
        screen = await _open_dialog(pilot, app)
        assert screen.account == "large"
        lines = screen.detail.splitlines()
        assert lines[0] == "DRIFT BLOCK since 2026-03-02 15:28:00Z; entries blocked."
        assert [line.split() for line in lines[1:4]] == [
            ["SYMBOL", "DATABASE", "BROKER"], ["AAPL", "5", "8"], ["MSFT", "4", "5"]]
        shown = str(screen.query_one("#confirm-detail").render())
        assert "AAPL" in shown and "DRIFT BLOCK" in shown
        # The safe answer has the focus: Enter alone cancels; so does Escape.
        assert screen.focused is not None and screen.focused.id == "no"
        await pilot.press("enter")
        await _closed(pilot, app)
        await _open_dialog(pilot, app)
        await pilot.press("escape")
        await _closed(pilot, app)
        await pilot.pause(0.3)
        assert await _accepts(ops_store) == []


async def test_confirm_records_the_request_and_says_it_was_not_applied(
        dash_env: RuntimeEnv, config: Config, ops_store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tui.control, "ACCEPT_WAIT_S", 0.5)
    app = await _seeded(ops_store, dash_env, config)
    posted: list[PositionsAccepted] = []

    def hook(message: Message) -> None:
        if isinstance(message, PositionsAccepted):
            posted.append(message)

    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        notes = Notes(app, monkeypatch)
        await _select(pilot, app, "large")
        await _open_dialog(pilot, app)
        await pilot.press("y")
        await _closed(pilot, app)
        # No position manager runs here: the request stays pending, and the notice says so.
        await until(pilot, lambda: notes.has("has not applied"), what="the notice")
        assert ("large: requested; the position manager has not applied it within 0.5s — is "
                "large-position-manager running? It applies the request at its next sync."
                in notes.texts)
        rows = await _accepts(ops_store)
        assert len(rows) == 1
        assert rows[0]["account"] == "large" and rows[0]["applied_at"] is None
        assert rows[0]["requested_by"].startswith("dash:")
        assert len(posted) == 1 and posted[0].record is None
        assert posted[0].account == "large" and posted[0].request_id == str(rows[0]["id"])


async def test_an_applied_accept_is_reported_and_the_block_lifts(
        dash_env: RuntimeEnv, config: Config, ops_store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tui.control, "ACCEPT_WAIT_S", 20.0)
    app = await _seeded(ops_store, dash_env, config)
    async with app.run_test(size=(160, 48)) as pilot:
        notes = Notes(app, monkeypatch)
        accounts = await _select(pilot, app, "large")
        await _open_dialog(pilot, app)
        await pilot.press("tab")  # to Accept
        assert app.screen.focused is not None and app.screen.focused.id == "yes"
        await pilot.press("enter")
        await _closed(pilot, app)

        # Play the position manager: take the pending request, apply it (as
        # ops.store.positions.apply_accepts records it) and lift the block.
        rows: list[Any] = []

        async def requested() -> bool:
            rows[:] = await _accepts(ops_store)
            return bool(rows)

        for _ in range(250):
            if await requested():
                break
            await pilot.pause(0.02)
        assert len(rows) == 1, "no request recorded"
        await ops_store.pool.execute(
            "UPDATE position_accepts SET applied_at = $2, applied_by = $3,"
            " before = $4::text::jsonb, after = $5::text::jsonb, detail = $6"
            " WHERE id = $1", rows[0]["id"], T, "large-position-manager",
            json.dumps({"AAPL": "5", "MSFT": "4"}), json.dumps({"AAPL": "8", "MSFT": "5"}),
            "accepted")
        await ops_store.set_control("large", "drift_block",
                                    {"blocked": False, "reason": "broker positions accepted"},
                                    by="large-position-manager")
        loads = app.loads
        await until(pilot, lambda: notes.has("broker positions accepted"), what="the notice")
        assert ("large: broker positions accepted by large-position-manager "
                "(AAPL 5 -> 8; MSFT 4 -> 5)" in notes.texts)
        # The dashboard reloads after the answer (no poll is due for an hour): the marker
        # goes.
        await until(pilot, lambda: app.loads > loads, what="reload")
        await until(pilot, lambda: cells(accounts, "large")["pos"] == "3", what="unmarked")


async def test_the_drift_marker_fits_80_columns(dash_env: RuntimeEnv, config: Config,
                                                ops_store: Store) -> None:
    app = await _seeded(ops_store, dash_env, config)
    async with app.run_test(size=(80, 24)) as pilot:
        accounts = await _select(pilot, app, "large")
        assert cells(accounts, "large")["pos"] == "DRIFT"
        assert accounts.max_scroll_x == 0  # every column still on screen


def test_drift_values_decode_as_the_dispatcher_judges_them() -> None:
    assert drift_block(None) is None
    assert drift_block(True) == DriftBlock(True, "", None, ())
    assert drift_block(False) == DriftBlock(False, "", None, ())
    garbage = drift_block(["AAPL"])
    assert garbage is not None and garbage.blocked  # unreadable: blocked, the safe side
    lifted = drift_block({"blocked": False, "reason": "broker positions accepted"})
    assert lifted == DriftBlock(False, "broker positions accepted", None, ())
    odd = drift_block({"since": "yesterday", "symbols": {"B": {"expected": "1", "actual": "2"},
                                                         "A": "?"}})
    assert odd == DriftBlock(True, "", None, (DriftSymbol("A", "?", "?"),
                                              DriftSymbol("B", "1", "2")))


def test_dialog_lists_a_few_symbols_and_warns_without_postgres() -> None:
    symbols = tuple(DriftSymbol(f"S{i}", str(i), str(i + 1)) for i in range(MAX_SYMBOLS + 2))
    row = AccountRow(
        name="large", account_number=None, expected_account_number="PASIM0000001",
        equity=Decimal(1), cash=None, buying_power=None, day_pl=None, open_positions=7,
        kill_switch="off", reconciliation="reconciled", as_of=None,
        drift=DriftBlock(True, "", None, symbols))
    text = accept_detail(row, database_reachable=False)
    assert "S4" in text and "S5" not in text
    assert "… and 2 more (see the position-drift incident)" in text
    assert text.endswith("⚠ Postgres is unreachable: the request would fail now.")
    assert accept_detail(None, True).startswith("Drift state unknown")


async def test_without_postgres_nothing_is_requested_and_the_notice_says_why(
        pg_dedicated: EmbeddedPostgres, pg_home: Path, config: Config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = RuntimeEnv(config_path=CONFIG, home=pg_home / "ops", database_url=pg_dedicated.url())
    async with await Store.open(env, process="fixture") as store:
        await write_fixture(store, T)
        await write_drift_block(store)
    await asyncio.to_thread(pg_dedicated.stop, mode="fast")
    async with await Store.open(env, process="ops-dash") as store:
        data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                             lambda: T)
        app = Dashboard(data, refresh_s=3600)
        async with app.run_test(size=(160, 48)) as pilot:
            notes = Notes(app, monkeypatch)
            await _select(pilot, app, "large")
            screen = await _open_dialog(pilot, app)
            # The buffer's copy of the drift block still shows, with a warning.
            assert "MSFT" in screen.detail
            assert "Postgres is unreachable: the request would fail now." in screen.detail
            await pilot.press("y")
            await until(pilot, lambda: notes.has("nothing was requested"), what="the notice")
            assert ("large: Postgres is unreachable: nothing was requested (the position "
                    "manager keeps its baseline in Postgres)" in notes.texts)
