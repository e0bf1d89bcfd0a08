"""The signals pane (5) and the pause mode picker (p), against a real Postgres.

The pane: queued (with how long), submitted (with the order it became), rejected (with the
dispatcher's reason) and expired signals, newest first, counted in the tab strip; Enter
shows one in full; on large terminals it takes the width under the processes while
selected; a load that could not read signals (Postgres away) keeps the rows and says so.
The picker: halt, reduce-only, flatten (managed) and flatten-all, each then behind the
confirmation, writing the kill switch `ops pause --mode` writes; Escape, or the mode
already engaged, writes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from textual.pilot import Pilot
from textual.widgets import Label, OptionList, Static

from ops.commands.control import read_kill_switch
from ops.core.config import Config
from ops.core.models import KillSwitch, Order
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.signal_records import SignalRecord
from ops.supervise.supervisor import SupervisorClient
from tests.support import eventually
from tests.tui.conftest import T
from tests.tui.fixtures import write_fixture
from tests.tui.helpers import cells, column, until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.messages import StateLoaded
from tui.screens.confirm import ConfirmScreen
from tui.screens.detail import DetailScreen
from tui.screens.help import HelpScreen
from tui.screens.pause import PauseModeScreen
from tui.widgets.accounts import AccountsTable
from tui.widgets.feed import FeedTable
from tui.widgets.signals import SignalsTable, signal_text

REASON = "max_order_notional: order notional 950.00 exceeds max_order_notional 100.00"


async def write_signals(store: Store) -> dict[str, int]:
    """One signal in each state, a minute apart; the submitted one's order partly filled."""
    ids: dict[str, int] = {}
    for i, (name, account, symbol) in enumerate((
            ("submitted", "large", "NVDA"), ("rejected", "tiny", "AAPL"),
            ("expired", "tiny", "AMD"), ("queued", "large", "SPY"))):
        sid = await store.insert_signal(account=account, symbol=symbol, side="buy",
                                        qty=Decimal(4), created_at=T - timedelta(minutes=4 - i))
        assert sid is not None
        ids[name] = sid
    cid = f"ops-large-sig-{ids['submitted']}"
    await store.record_signal_decision(ids["submitted"], "submitted", reason="allowed",
                                       client_order_id=cid, broker_order_id="b7c1d2e3f4",
                                       attempts=1)
    at = T - timedelta(minutes=4)
    await store.upsert_orders("large", [Order(
        id="b7c1d2e3f4", client_order_id=cid, symbol="NVDA", side="buy", order_type="market",
        time_in_force="day", status="partially_filled", created_at=at, updated_at=at,
        submitted_at=at, qty=Decimal(4), filled_qty=Decimal(3),
        filled_avg_price=Decimal("120.5"))])
    await store.record_signal_decision(ids["rejected"], "rejected", reason=REASON, attempts=1)
    await store.record_signal_decision(ids["expired"], "expired",
                                       reason="expiry: signal is 601.0s old", attempts=1)
    return ids


def _app(env: RuntimeEnv, config: Config, store: Store) -> Dashboard:
    data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                         lambda: T)
    return Dashboard(data, refresh_s=3600)


def _tabs(app: Dashboard) -> str:
    return str(app.query_one("#panel-tabs", Static).render())


async def _signals(pilot: Pilot[None], app: Dashboard, n: int) -> SignalsTable:
    await until(pilot, lambda: app.loads >= 1, what="first load")
    await pilot.press("5")
    table = app.query_one(SignalsTable)
    await until(pilot, lambda: table.display and table.row_count == n, what="signals shown")
    return table


async def test_the_pane_shows_each_state_newest_first(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    ids = await write_signals(ops_store)
    app = _app(dash_env, config, ops_store)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await _signals(pilot, app, 4)
        assert app.focused is table
        assert [int(k) for k in table.items] == [ids[n] for n in (
            "queued", "expired", "rejected", "submitted")]
        assert column(table, "time") == ["15:29:00", "15:28:00", "15:27:00", "15:26:00"]
        assert column(table, "state") == ["… queued 60s", "⊘ expired", "✗ REJECTED",
                                          "✓ submitted"]
        rejected = cells(table, str(ids["rejected"]))
        assert (rejected["account"], rejected["signal"], rejected["outcome"]) == (
            "tiny", "buy 4 AAPL", REASON)
        assert cells(table, str(ids["submitted"]))["outcome"] == \
            "order b7c1d2e3 partially_filled 3/4"
        assert cells(table, str(ids["expired"]))["outcome"] == "expiry: signal is 601.0s old"
        assert cells(table, str(ids["queued"]))["outcome"] == ""
        assert table.border_subtitle == "1 queued · 1 submitted · 1 rejected · 1 expired"
        # At 80 columns the tab strip says it short, counts kept.
        assert "[5 Sig 1q 1rej]" in _tabs(app)
        assert table.selected is not None and table.selected.id == ids["queued"]

        # Enter: the highlighted signal in full, in the words of `ops signal show`.
        table.move_cursor(row=table.get_row_index(str(ids["submitted"])))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail")
        assert isinstance(app.screen, DetailScreen)
        text = app.screen.text
        for needle in (f"id:            {ids['submitted']}", "state:         submitted",
                       "broker order:  b7c1d2e3f4", "order status:  partially_filled",
                       "filled:        3 @ 120.5 of 4", "reason:\n  allowed"):
            assert needle in text, (needle, text)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, DetailScreen), what="closed")
        table.move_cursor(row=table.get_row_index(str(ids["rejected"])))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail")
        assert isinstance(app.screen, DetailScreen)
        assert f"reason:\n  {REASON}" in app.screen.text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, DetailScreen), what="closed")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        help_text = str(app.screen.query_one("#help-text", Static).render())
        assert "Details" in help_text.split("On the signals panel (5):")[1]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen), what="closed")

        # The account filter applies to the pane as to every other.
        app.set_filter("tiny")
        await until(pilot, lambda: table.row_count == 2, what="tiny's signals only")
        assert {r.account for r in table.items.values()} == {"tiny"}

        # A load that could not read signals (Postgres away) keeps what is shown.
        app.set_filter(None)
        await until(pilot, lambda: table.row_count == 4, what="all signals again")
        assert app.state is not None
        app.post_message(StateLoaded(replace(app.state, signals=None)))
        await until(pilot, lambda: "not refreshed" in str(table.border_subtitle),
                    what="stale subtitle")
        assert table.row_count == 4 and table.has_class("-stale")
        assert table.border_subtitle == "not refreshed: Postgres unreachable (read 0s ago)"


async def test_a_large_terminal_shows_signals_full_width_under_the_processes(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    await write_signals(ops_store)
    app = _app(dash_env, config, ops_store)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        table, feed = app.query_one(SignalsTable), app.query_one(FeedTable)
        others = [app.query_one(f"#{key}") for key in ("positions", "incidents", "feed")]
        assert not table.display and all(w.display for w in others)
        await _signals(pilot, app, 4)
        await until(pilot, lambda: not any(w.display for w in others), what="grid replaced")
        assert app.query_one("#processes").display
        assert table.region.width >= 150 and table.region.height > 10
        rejected = next(k for k, r in table.items.items() if r.state == "rejected")
        assert cells(table, rejected)["outcome"] == REASON
        await pilot.press("4")
        await until(pilot, lambda: feed.display and not table.display, what="feed back")
        assert all(w.display for w in others)


async def _picker(pilot: Pilot[None], app: Dashboard, account: str) -> PauseModeScreen:
    accounts = app.query_one(AccountsTable)
    accounts.focus()
    accounts.move_cursor(row=accounts.get_row_index(account))
    await pilot.press("p")
    await until(pilot, lambda: isinstance(app.screen, PauseModeScreen), what="the picker")
    screen = app.screen
    assert isinstance(screen, PauseModeScreen)
    return screen


async def _switch(store: Store, account: str, want: KillSwitch) -> None:
    async def reached() -> bool:
        return await read_kill_switch(store, account) == want

    await eventually(reached, f"{account}'s kill switch {want.value}", 10)


async def test_pause_offers_every_mode_then_confirms(
        dash_env: RuntimeEnv, config: Config, ops_store: Store) -> None:
    await write_fixture(ops_store, T)  # tiny is halted, large is not
    app = _app(dash_env, config, ops_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        picker = await _picker(pilot, app, "large")
        options = picker.query_one(OptionList)
        assert [options.get_option_at_index(i).id for i in range(options.option_count)] == [
            "halt", "reduce-only", "flatten", "flatten-all"]
        assert options.highlighted == 0
        text = " ".join(str(options.get_option_at_index(i).prompt)
                        for i in range(options.option_count))
        assert "external positions (opened by hand or by another tool)" in text
        assert "EVERY position is closed" in text
        assert "kill switch now: off" in str(picker.query_one("#pause-question", Label)
                                             .render())

        # Escape: nothing asked, nothing written.
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, PauseModeScreen), what="closed")
        assert not isinstance(app.screen, ConfirmScreen)

        # Down, Enter: reduce-only, confirmed with "y".
        await _picker(pilot, app, "large")
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        assert "Pause large (reduce-only)?" in str(app.screen.query_one(
            "#confirm-question", Label).render())
        await pilot.press("y")
        await _switch(ops_store, "large", KillSwitch.REDUCE_ONLY)

        # F: flatten everything asks with its own words; "n" writes nothing.
        await _picker(pilot, app, "large")
        await pilot.press("F")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        assert "EVERYTHING, external positions included?" in str(app.screen.query_one(
            "#confirm-question", Label).render())
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="no")
        assert await read_kill_switch(ops_store, "large") is KillSwitch.REDUCE_ONLY

        # f: flatten the managed positions, confirmed.
        await _picker(pilot, app, "large")
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        assert "managed positions only?" in str(app.screen.query_one(
            "#confirm-question", Label).render())
        await pilot.press("y")
        await _switch(ops_store, "large", KillSwitch.FLATTEN)

        # The mode already engaged is not offered again: tiny is halted.
        picker = await _picker(pilot, app, "tiny")
        assert picker.query_one(OptionList).get_option("halt").disabled
        assert picker.query_one(OptionList).highlighted == 1  # reduce-only
        await pilot.press("h")
        await pilot.pause()
        assert isinstance(app.screen, PauseModeScreen)  # still picking, nothing asked
        await pilot.press("escape")
        assert await read_kill_switch(ops_store, "tiny") is KillSwitch.HALT


def test_a_reduce_only_signal_reads_as_one() -> None:
    rec = SignalRecord(
        id=1, idempotency_key=None, account="tiny", symbol="SPY", side="sell", qty=Decimal(2),
        notional=None, order_type="market", limit_price=None, time_in_force="day",
        strategy="demo", created_at=T, expires_at=None, status="pending", reason=None,
        client_order_id=None, broker_order_id=None, decided_at=None, attempts=0)
    assert signal_text(rec) == "sell 2 SPY"
    assert signal_text(replace(rec, reduce_only=True)) == "sell 2 SPY reduce-only"
