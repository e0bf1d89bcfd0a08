"""Protective stops through the position manager, against the real simulator (issue 14.3).

The `Rig` of test_position_manager.py (a bound Broker, a Store on a fresh database, a
TradeStream recording every trade update), with a simulator whose market only moves when
a test moves it (no timer): a stop triggers when the test calls `engine.process()`.
Each PositionManager here has protective stops on; a new instance is a restarted process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from ops.commands.positions import change_owner
from ops.core.exits import ExitRules
from ops.core.models import (
    OptionSymbol,
    Order,
    OrderRequest,
    OrderType,
    Position,
    Side,
    TimeInForce,
)
from ops.roles.position_manager import PositionManager, exit_prefix
from ops.roles.protective_stops import (
    cancel_stops,
    round_stop,
    stop_client_order_id,
    stop_prefix,
)
from ops.sim import SimConfig, Simulator, default_accounts
from ops.sim.accounts import OrderState
from ops.store import positions as pq
from tests.roles import test_position_manager as pm_tests
from tests.roles.test_position_manager import ACCOUNT, Rig
from tests.support import eventually

D = Decimal
rig = pm_tests.rig  # the fixture, with this module's `sim`
STOPS = stop_prefix(ACCOUNT)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """No market timer: prices move only when a test moves them, and stops trigger only
    when it lets the engine match (`sim.engine.process()`)."""
    s = Simulator(SimConfig(seed=7, clock="open", accounts=default_accounts(seed=7),
                            market_step_s=None, fill_lot=Decimal(100)))
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        s.faults.clear()
        await s.stop()


def manager(rig: Rig, **kw: Any) -> PositionManager:
    return rig.manager(protective_stops=lambda: True, **kw)


def sim_orders(rig: Rig, symbol: str | None = None, prefix: str = STOPS) -> list[OrderState]:
    st = rig.sim.engine.states[ACCOUNT]
    return [o for o in sorted(st.orders.values(), key=lambda o: o.seq)
            if o.client_order_id.startswith(prefix) and symbol in (None, o.symbol)]


def resting(rig: Rig, symbol: str | None = None) -> list[OrderState]:
    return [o for o in sim_orders(rig, symbol) if o.is_open]


async def opened_at(rig: Rig, symbol: str) -> datetime:
    return (await pq.load_exit_states(rig.store.pool, ACCOUNT))[symbol].state.opened_at


async def position(rig: Rig, symbol: str) -> Position:
    p = await rig.broker.get_position(symbol)
    assert p is not None
    return p


async def hand_stop(rig: Rig, symbol: str, qty: int, price: str, cid: str,
                    side: Side = Side.SELL) -> Order:
    """A stop placed behind the pipeline's back (by hand, or by an earlier life)."""
    res = await rig.broker.submit_order(OrderRequest(
        symbol=symbol, side=side, client_order_id=cid, qty=D(qty), order_type=OrderType.STOP,
        time_in_force=TimeInForce.GTC, stop_price=D(price)))
    assert res.outcome == "accepted" and res.order is not None, res
    return res.order


async def open_long(rig: Rig, symbol: str, qty: int, price: str, fills: int) -> None:
    rig.sim.market.set_price(symbol, D(price))
    await rig.buy(symbol, qty)
    await rig.wait_fills(fills)


# --- placing and replacing ------------------------------------------------------------------


async def test_a_managed_position_gets_one_gtc_stop_at_the_tighter_level(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5), trailing_stop_pct=D(3))
    await open_long(rig, "AAPL", 10, "200", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "AAPL")
    entry = (await position(rig, "AAPL")).avg_entry_price
    tracked = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["AAPL"].state
    level = max(entry * D("0.95"), tracked.high_water * D("0.97"))  # the trailing one
    assert (stop.side, stop.type, stop.time_in_force, stop.qty) == ("sell", "stop", "gtc", D(10))
    assert stop.stop_price == round_stop(level, True, False)
    assert stop.client_order_id == stop_client_order_id(ACCOUNT, "AAPL", tracked.opened_at, 1)
    # Steady state: nothing placed, replaced or cancelled again.
    await pm.tick()
    await pm.tick()
    assert [o.id for o in resting(rig, "AAPL")] == [stop.id]
    c = pm.stops.counters
    assert (c.stops_placed, c.stops_replaced, c.stops_cancelled, c.stops_resting) == (1, 0, 0, 1)
    # The stream stored it like any pipeline order.
    await eventually(lambda: _stored(rig, stop.client_order_id), "the stop stored")


async def _stored(rig: Rig, cid: str) -> bool:
    return bool(await rig.store.pool.fetchval(
        "SELECT count(*) FROM orders WHERE account = $1 AND client_order_id = $2",
        ACCOUNT, cid))


async def test_the_trailing_level_moving_replaces_the_stop_by_meaningful_steps(
        rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5), trailing_stop_pct=D(3))
    await open_long(rig, "MSFT", 4, "400", 1)
    pm = manager(rig)
    await pm.tick()
    [first] = resting(rig, "MSFT")
    epoch = await opened_at(rig, "MSFT")
    rig.sim.market.set_price("MSFT", D(420))  # new high: trailing level 407.40
    await pm.tick()
    [second] = resting(rig, "MSFT")
    assert second.id != first.id and second.replaces == first.id
    assert second.client_order_id == stop_client_order_id(ACCOUNT, "MSFT", epoch, 2)
    assert (second.stop_price, second.qty, second.time_in_force) == (D("407.4"), D(4), "gtc")
    assert rig.sim.engine.states[ACCOUNT].orders[first.id].status == "replaced"
    # +0.1 %: the level moves by less than a step (0.25 %): no churn.
    rig.sim.market.set_price("MSFT", D("420.42"))
    await pm.tick()
    assert [o.id for o in resting(rig, "MSFT")] == [second.id]
    # +1 %: replaced again, the next number of the same epoch.
    rig.sim.market.set_price("MSFT", D("424.50"))
    await pm.tick()
    [third] = resting(rig, "MSFT")
    assert third.client_order_id == stop_client_order_id(ACCOUNT, "MSFT", epoch, 3)
    assert third.stop_price == round_stop(D("424.50") * D("0.97"), True, False)
    assert pm.stops.counters.stops_replaced == 2


async def test_the_quantity_follows_the_managed_part_and_release_cancels(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "NVDA", 10, "120", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "NVDA")
    assert stop.qty == 10
    # The operator releases 4: the stop covers the 6 still managed.
    await change_owner(rig.store, ACCOUNT, "NVDA", adopt=False, qty=D(4), by="cli:tester")
    await pm.tick()
    [smaller] = resting(rig, "NVDA")
    assert smaller.qty == 6 and smaller.stop_price == stop.stop_price
    # ... and the rest: an external position has no stop of the pipeline's.
    await change_owner(rig.store, ACCOUNT, "NVDA", adopt=False, qty=None, by="cli:tester")
    await pm.tick()
    assert resting(rig, "NVDA") == []
    assert rig.sim.engine.states[ACCOUNT].orders[smaller.id].status == "canceled"
    assert (await position(rig, "NVDA")).qty == 10  # nothing sold


async def test_an_external_position_gets_no_stop_a_mixed_one_covers_the_managed_part(
        rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5))
    rig.sim.market.set_price("QCOM", D(150))
    await rig.buy("QCOM", 30, by_hand=True)
    await rig.buy("AMD", 7, by_hand=True)
    await rig.wait_fills(2)
    pm = manager(rig)
    await pm.tick()
    assert sim_orders(rig) == []
    await rig.buy("QCOM", 4)
    await rig.wait_fills(3)
    await pm.tick()
    [stop] = resting(rig)
    assert (stop.symbol, stop.qty) == ("QCOM", D(4))


async def test_a_fill_of_the_stop_closes_the_position_and_nothing_is_placed_again(
        rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "IWM", 10, "200", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "IWM")
    assert stop.stop_price is not None
    rig.sim.market.set_price("IWM", stop.stop_price - D("0.01"))
    rig.sim.engine.process()  # the broker protects it: the stop fills
    assert rig.sim.engine.states[ACCOUNT].orders[stop.id].status == "filled"
    await rig.wait_fills(2)
    await pm.tick()
    await pm.tick()
    assert await rig.broker.get_position("IWM") is None  # flat, not short
    assert resting(rig) == [] and len(sim_orders(rig)) == 1
    assert sim_orders(rig, prefix=exit_prefix(ACCOUNT)) == []  # no exit was needed


async def test_a_short_gets_a_buy_stop_above(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5), trailing_stop_pct=D(4))
    rig.sim.market.set_price("TSLA", D(200))
    await rig.buy("TSLA", 5, Side.SELL)
    await rig.wait_fills(1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "TSLA")
    entry = (await position(rig, "TSLA")).avg_entry_price
    assert (stop.side, stop.qty) == ("buy", D(5))
    assert stop.stop_price == round_stop(entry * D("1.04"), False, False)


# --- options ----------------------------------------------------------------------------------


async def test_an_option_gets_a_day_stop_placed_again_for_the_next_session(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(20))
    expiry = datetime.now(UTC).date() + timedelta(days=30)
    symbol = str(OptionSymbol("AAPL", expiry, "C", D(190)))
    await open_long(rig, symbol, 2, "4.20", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, symbol)
    entry = (await position(rig, symbol)).avg_entry_price
    assert (stop.side, stop.qty, stop.time_in_force) == ("sell", D(2), "day")
    assert stop.stop_price == round_stop(entry * D("0.8"), True, True)
    assert stop.position_intent == "sell_to_close"
    # The session ends: the day stop expires; the next tick sends the next session's.
    rig.sim.engine._expire_day_orders()
    assert resting(rig, symbol) == []
    await pm.tick()
    [again] = resting(rig, symbol)
    epoch = await opened_at(rig, symbol)
    assert again.client_order_id == stop_client_order_id(ACCOUNT, symbol, epoch, 2)
    assert (again.time_in_force, again.qty, again.stop_price) == ("day", D(2), stop.stop_price)


# --- local exits: cancel first, never both -------------------------------------------------


async def test_a_local_exit_cancels_the_stop_first_and_only_the_exit_fills(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5), take_profit_pct=D(10))
    await open_long(rig, "SPY", 10, "500", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "SPY")
    rig.sim.market.set_price("SPY", D(560))  # take profit
    await pm.tick()
    orders = rig.sim.engine.states[ACCOUNT].orders
    assert orders[stop.id].status == "canceled" and orders[stop.id].filled_qty == 0
    [exit_order] = sim_orders(rig, "SPY", prefix=exit_prefix(ACCOUNT))
    assert exit_order.status == "filled" and exit_order.filled_qty == 10
    assert exit_order.seq > stop.seq
    cancelled_at = orders[stop.id].canceled_at
    assert cancelled_at is not None and cancelled_at <= exit_order.created_at  # first
    assert await rig.broker.get_position("SPY") is None
    assert resting(rig) == [] and len(sim_orders(rig, "SPY")) == 1  # none placed after
    assert pm.stops.counters.exit_stop_cancels == 1
    await pm.tick()
    assert resting(rig) == []


@pytest.mark.parametrize("when", ["after the position read", "between listing and cancel"])
async def test_a_stop_that_fills_first_means_no_exit_is_sent(rig: Rig, when: str,
                                                             monkeypatch: Any) -> None:
    """The stop-loss fires locally as the broker's stop fills: never both, never a short."""
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AMD", 10, "160", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "AMD")
    rig.sim.market.set_price("AMD", D(150))  # below the stop and the stop-loss level
    # The stop's fill reaches the database late (else ownership, read after it, would
    # already say nothing is managed and no exit would be decided at all).
    rig.sim.faults.mute(ACCOUNT)
    broker = rig.broker
    if when == "after the position read":
        read = broker.list_positions

        async def racing_read() -> list[Position]:
            out = await read()
            rig.sim.engine.process()  # the stop fills right after the tick's read
            return out
        monkeypatch.setattr(broker, "list_positions", racing_read)
    else:
        cancel = broker.cancel_order

        async def racing_cancel(order_id: str) -> None:
            rig.sim.engine.process()  # the stop fills as the cancel goes out
            await cancel(order_id)
        monkeypatch.setattr(broker, "cancel_order", racing_cancel)
    await pm.tick()
    assert rig.sim.engine.states[ACCOUNT].orders[stop.id].status == "filled"
    assert sim_orders(rig, "AMD", prefix=exit_prefix(ACCOUNT)) == []  # no exit sent
    assert await rig.broker.get_position("AMD") is None  # flat, not short
    assert pm.counters.exits_waiting == 1 and pm.stops.counters.exit_stop_filled == 1
    monkeypatch.undo()
    assert rig.sim.faults.unmute(ACCOUNT, deliver=True) > 0
    await rig.wait_fills(2)
    await pm.tick()
    assert sim_orders(rig, "AMD", prefix=exit_prefix(ACCOUNT)) == [] and resting(rig) == []


async def test_a_stop_cancelled_by_someone_else_is_placed_again_after_a_grace(
        rig: Rig) -> None:
    """An exit signal's sender cancels the stop to sell (cancel_stops): the position
    manager does not put one back at once (it would hold the shares that sell needs)."""
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AAPL", 10, "200", 1)
    pm = manager(rig)
    pm.stops.foreign_cancel_grace_s = 1.5
    await pm.tick()
    [stop] = resting(rig, "AAPL")
    other = await cancel_stops(rig.broker, ACCOUNT, "AAPL", wait_s=2)
    assert other.clear and [o.id for o in other.found] == [stop.id]
    await pm.tick()
    assert resting(rig) == [] and pm.stops.counters.stops_deferred == 1
    await asyncio.sleep(1.6)
    await pm.tick()
    [again] = resting(rig, "AAPL")
    epoch = await opened_at(rig, "AAPL")
    assert again.client_order_id == stop_client_order_id(ACCOUNT, "AAPL", epoch, 2)


async def test_a_level_already_crossed_is_not_placed(rig: Rig) -> None:
    """Placed, a stop at a level the price has passed would fill at once, on a level from
    an older read: the exit rules decide instead (here the market is closed for them)."""
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AAPL", 10, "200", 1)

    async def closed() -> bool:
        return False
    pm = manager(rig, market_open=closed)
    await pm.tick()
    [stop] = resting(rig, "AAPL")
    rig.sim.engine.cancel(rig.sim.engine.states[ACCOUNT], stop.id)
    pm.stops.foreign_cancel_grace_s = 0
    rig.sim.market.set_price("AAPL", D("150"))
    await pm.tick()
    assert resting(rig) == [] and pm.stops.counters.stops_crossed == 1
    assert [o.status for o in sim_orders(rig, "AAPL")] == ["canceled"]
    assert (await position(rig, "AAPL")).qty == 10


# --- reconcile at start ---------------------------------------------------------------------


async def test_a_restart_reconciles_missing_orphaned_and_duplicate_stops(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AAPL", 10, "200", 1)
    await open_long(rig, "MSFT", 6, "400", 2)
    rig.sim.market.set_price("QCOM", D(150))
    await rig.buy("QCOM", 5, by_hand=True)  # external
    await rig.wait_fills(3)
    first = manager(rig)
    await first.tick()
    [aapl] = resting(rig, "AAPL")
    [msft] = resting(rig, "MSFT")
    assert resting(rig, "QCOM") == []
    aapl_epoch, msft_epoch = await opened_at(rig, "AAPL"), await opened_at(rig, "MSFT")
    # While the pipeline is down, its stops get out of shape:
    # MSFT's is cancelled (missing) ...
    await rig.broker.cancel_order(msft.id)
    # ... AAPL has two (an earlier life's crash between two placements) ...
    await rig.broker.cancel_order(aapl.id)
    dup_a = await hand_stop(rig, "AAPL", 5, "190", stop_client_order_id(
        ACCOUNT, "AAPL", aapl_epoch, 5))
    dup_b = await hand_stop(rig, "AAPL", 5, "190", stop_client_order_id(
        ACCOUNT, "AAPL", aapl_epoch, 6))
    # ... and one rests on the external QCOM (orphaned).
    orphan = await hand_stop(rig, "QCOM", 5, "140", f"{STOPS}QCOM-20260101T000000000000-1")

    restarted = manager(rig)
    # The cancels above are this test's hand, not an exit signal in flight: no waiting.
    restarted.stops.foreign_cancel_grace_s = 0
    await restarted.tick()
    orders = rig.sim.engine.states[ACCOUNT].orders
    [aapl_now] = resting(rig, "AAPL")
    assert aapl_now.replaces == dup_b.id and aapl_now.qty == 10  # kept one, made it whole
    assert orders[dup_a.id].status == "canceled"
    assert aapl_now.client_order_id == stop_client_order_id(ACCOUNT, "AAPL", aapl_epoch, 7)
    [msft_now] = resting(rig, "MSFT")  # placed again, under the next unused number
    assert msft_now.client_order_id == stop_client_order_id(ACCOUNT, "MSFT", msft_epoch, 2)
    assert msft_now.qty == 6 and msft_now.stop_price == msft.stop_price
    assert orders[orphan.id].status == "canceled" and resting(rig, "QCOM") == []
    c = restarted.stops.counters
    assert (c.stops_placed, c.stops_replaced, c.stops_cancelled) == (1, 1, 2)
    # Another restart finds everything in order: nothing placed, replaced or cancelled.
    again = manager(rig)
    await again.tick()
    c = again.stops.counters
    assert (c.stops_placed, c.stops_replaced, c.stops_cancelled, c.stops_resting) == (0, 0, 0, 2)
    assert {o.symbol: o.id for o in resting(rig)} == {"AAPL": aapl_now.id, "MSFT": msft_now.id}


async def test_a_restart_adopts_a_stop_its_previous_life_placed_unanswered(rig: Rig) -> None:
    """A crash after the submit went out: the id is the same after the restart, so the
    stop found at the broker is the one, and no second is placed."""
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AAPL", 10, "200", 1)
    pm = manager(rig)
    await pm.tick()
    [stop] = resting(rig, "AAPL")
    epoch = await opened_at(rig, "AAPL")
    # The previous life's submission of the same id, which it never heard back about.
    again = await rig.broker.submit_order(OrderRequest(
        symbol="AAPL", side=Side.SELL, qty=D(10), order_type=OrderType.STOP,
        time_in_force=TimeInForce.GTC, stop_price=stop.stop_price,
        client_order_id=stop_client_order_id(ACCOUNT, "AAPL", epoch, 1)))
    assert again.order is not None and again.order.id == stop.id  # the broker's answer
    await manager(rig).tick()
    assert [o.id for o in resting(rig)] == [stop.id] and len(sim_orders(rig)) == 1


# --- switches -------------------------------------------------------------------------------


async def test_turning_it_off_cancels_them_and_flatten_leaves_them_alone(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AAPL", 3, "200", 1)
    on = {"value": True}
    pm = rig.manager(protective_stops=lambda: on["value"])
    await pm.tick()
    [stop] = resting(rig, "AAPL")
    # Flatten: the dispatcher cancels every order and closes the positions; the position
    # manager neither places nor cancels stops meanwhile.
    await rig.store.set_control(ACCOUNT, "kill_switch", {"mode": "flatten"}, "test")
    await rig.broker.cancel_order(stop.id)
    await pm.tick()
    assert resting(rig) == [] and pm.stops.counters.stops_skipped == 1
    await rig.store.set_control(ACCOUNT, "kill_switch", {"mode": "off"}, "test")
    pm.stops.foreign_cancel_grace_s = 0  # the flatten's cancel is long past, say
    await pm.tick()
    [back] = resting(rig, "AAPL")
    # Off: the one resting is cancelled, and nothing more is asked of the broker after.
    on["value"] = False
    await pm.tick()
    assert resting(rig) == []
    assert rig.sim.engine.states[ACCOUNT].orders[back.id].status == "canceled"
    assert not pm.stops.active()
    listed: list[str] = []
    orig = rig.broker.list_orders

    async def counting(*args: Any, **kw: Any) -> list[Order]:
        listed.append(str(kw.get("status")))
        return await orig(*args, **kw)
    monkeypatch.setattr(rig.broker, "list_orders", counting)
    await pm.tick()
    assert listed == []  # off and cleaned up: no order listing per tick


async def test_a_stop_not_replaceable_while_accepted_is_cancelled_and_placed_again(
        rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=D(5))
    await open_long(rig, "AAPL", 10, "200", 1)
    pm = manager(rig)
    await pm.tick()
    rig.sim.faults.set_clock("closed")
    await change_owner(rig.store, ACCOUNT, "AAPL", adopt=False, qty=D(2), by="cli:tester")
    await pm.tick()  # "new": replaced; the replacement waits, accepted, for the open
    [second] = resting(rig, "AAPL")
    assert (second.qty, second.status) == (D(8), "accepted")
    await change_owner(rig.store, ACCOUNT, "AAPL", adopt=False, qty=D(3), by="cli:tester")
    await pm.tick()  # accepted: not replaceable, so cancelled and placed anew
    [third] = resting(rig, "AAPL")
    assert third.qty == 5 and third.replaces is None and third.id != second.id
    assert rig.sim.engine.states[ACCOUNT].orders[second.id].status == "canceled"
    epoch = await opened_at(rig, "AAPL")
    assert third.client_order_id == stop_client_order_id(ACCOUNT, "AAPL", epoch, 3)
