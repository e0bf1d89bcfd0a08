"""The dispatcher's core against real Postgres, the real simulator and real alpaca-py.

In-process: `Dispatcher` with a Store, a bound Broker, risk limits and the kill switch
read from the controls table, exactly as `build(ctx)` wires them (minus the runtime).
The subprocess crash test lives in test_dispatcher_process.py. Fixtures: `sim` from
tests/roles/conftest.py, `pg_url` from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ops.broker import Broker, BrokerEndpoints, BrokerSettings, TradeStream
from ops.commands.control import read_kill_switch
from ops.core import refusals
from ops.core.backoff import Backoff
from ops.core.models import (
    KILL_SWITCH_KEY,
    KillSwitch,
    OrderRequest,
    OrderType,
    Side,
    TimeInForce,
    TradeUpdate,
)
from ops.core.risk import RiskLimits, signal_client_order_id
from ops.roles.dispatcher import (
    DRIFT_KEY,
    RECONCILE_KEY,
    Dispatcher,
    NotReconciled,
    WakeLoop,
)
from ops.roles.protective_stops import stop_client_order_id
from ops.runtime.credentials import Credentials
from ops.runtime.ticker import Ticker
from ops.sim import Simulator
from ops.store import signals as sq
from ops.store.embedded import EmbeddedPostgres
from ops.store.ownership import managed_quantities
from ops.store.postgres import connect
from ops.store.signals import SignalListener
from ops.store.store import Store, order_op, trade_update_op
from tests.support import eventually

TINY_LIMITS = RiskLimits(
    max_order_notional=Decimal(500), max_symbol_notional=Decimal(900), max_open_positions=3,
    daily_loss_limit=Decimal(50), max_qty=Decimal(10), signal_ttl_s=120.0,
)
FAST = BrokerSettings(
    rest_timeout_s=2.0,
    retry=Backoff(initial_s=0.05, max_s=0.2, max_attempts=3, deadline_s=10.0),
)


@pytest.fixture
async def store(pg_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    from ops.runtime.env import RuntimeEnv

    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path, database_url=pg_url)
    s = await Store.open(env, process="test-dispatcher", url=pg_url,
                         buffer_path=tmp_path / "buffer.sqlite3")
    try:
        yield s
    finally:
        await s.close()


def make_broker(sim: Simulator, account: str) -> Broker:
    spec = sim.account(account)
    return Broker(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url),
                  Credentials(f"test/{account}", account, spec.key_id, spec.secret), FAST)


@dataclass
class Rig:
    sim: Simulator
    store: Store
    broker: Broker
    d: Dispatcher
    account: str

    async def signal(self, symbol: str, side: str, qty: str | None = None, *,
                     notional: str | None = None, account: str | None = None,
                     order_type: str = "market", limit_price: str | None = None,
                     created_at: datetime | None = None, reduce_only: bool = False) -> int:
        sid = await self.store.insert_signal(
            account=account or self.account, symbol=symbol, side=side,
            qty=Decimal(qty) if qty else None,
            notional=Decimal(notional) if notional else None, order_type=order_type,
            limit_price=Decimal(limit_price) if limit_price else None, created_at=created_at,
            reduce_only=reduce_only)
        assert sid is not None
        return sid

    async def row(self, sid: int) -> sq.SignalRow:
        r = await sq.get_signal(self.store.pool, sid)
        assert r is not None
        return r

    async def orders_for(self, sid: int, account: str | None = None) -> int:
        cid = signal_client_order_id(account or self.account, sid)
        st = self.sim.engine.states[account or self.account]
        return sum(1 for o in st.orders.values() if o.client_order_id == cid)

    async def switch(self, mode: KillSwitch) -> None:
        await self.store.set_control(self.account, KILL_SWITCH_KEY, {"mode": mode.value},
                                     by="test")

    async def position(self, symbol: str) -> Decimal:
        p = await self.broker.get_position(symbol)
        return Decimal(0) if p is None else p.qty


def dispatcher(store: Store, broker: Broker, account: str,
               limits: RiskLimits = TINY_LIMITS) -> Dispatcher:
    async def ks() -> KillSwitch:
        return await read_kill_switch(store, account)

    return Dispatcher(store=store, broker=broker, account=account, limits=lambda: limits,
                      kill_switch=ks, process=f"{account}-dispatcher")


@pytest.fixture
async def rig(sim: Simulator, store: Store) -> AsyncIterator[Rig]:
    broker = make_broker(sim, "tiny")
    await broker.bind_account(sim.account("tiny").account_number)
    # The trade stream stores every event, as the stream role does: ownership (managed
    # quantities, a managed-only flatten) is read from the stored fills.
    spec = sim.account("tiny")

    async def on_update(u: TradeUpdate) -> None:
        await store.write_many([trade_update_op("tiny", u), order_op("tiny", u.order)])

    async def on_bad(msg: object, why: str) -> None:
        raise AssertionError(f"bad stream message: {why}")

    stream = TradeStream(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url),
                         Credentials("test/tiny", "tiny", spec.key_id, spec.secret),
                         on_update, on_bad)
    await stream.start()
    await sim.wait_stream("tiny")
    try:
        yield Rig(sim, store, broker, dispatcher(store, broker, "tiny"), "tiny")
    finally:
        await stream.stop()
        broker.close()


async def test_notify_reaches_the_broker_without_any_tick(rig: Rig) -> None:
    """No ticker at all: the only wake-ups are the LISTEN connection's (on connect and on
    NOTIFY), so the order can only have reached the broker through the NOTIFY path."""
    listener = SignalListener(rig.store.url, "tiny", rig.d.wake)
    loop = WakeLoop(rig.d)
    tasks = [asyncio.create_task(listener.run()), asyncio.create_task(loop.run())]
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        await eventually(lambda: rig.d.reconciled, "reconciled after start")
        passes = rig.d.stats.passes
        sid = await rig.signal("NVDA", "buy", "1")
        await eventually(lambda: _gt(rig.orders_for(sid), 0), "order at the broker")
        await eventually(lambda: _status(rig, sid, "submitted"), "signal recorded submitted")
        assert listener.notifications >= 1
        assert rig.d.stats.passes > passes
        row = await rig.row(sid)
        assert row.client_order_id == signal_client_order_id("tiny", sid)
        order = await rig.broker.get_order_by_client_id(row.client_order_id)
        assert order is not None and row.broker_order_id == order.id
        linked = await rig.store.pool.fetchval(
            "SELECT signal_id FROM orders WHERE id = $1", order.id)
        assert linked == sid
    finally:
        listener.request_stop()
        loop.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def _gt(x: Awaitable[int], n: int) -> bool:
    return await x > n


async def _status(rig: Rig, sid: int, status: str) -> bool:
    return (await rig.row(sid)).status == status


async def test_reconcile_is_required_and_recorded(rig: Rig) -> None:
    sid = await rig.signal("NVDA", "buy", "1")
    # The broker cannot list orders: reconciliation cannot finish, nothing is claimed.
    rig.sim.faults.fail_next(n=50, status=500, path="/v2/orders", method="GET")
    with pytest.raises(NotReconciled):
        await rig.d.run_pass()
    assert not rig.d.reconciled
    assert (await rig.row(sid)).status == "pending"
    ctl = {c.key: c.value for c in (await rig.store.controls("tiny")).rows}
    assert ctl[RECONCILE_KEY]["state"] == "reconciling"
    assert "500" in ctl[RECONCILE_KEY]["error"] or "list orders" in ctl[RECONCILE_KEY]["error"]
    assert await rig.orders_for(sid) == 0

    rig.sim.faults.clear()
    report = await rig.d.run_pass()
    assert rig.d.reconciled
    assert [o.status for o in report.outcomes] == ["submitted"]
    ctl = {c.key: c.value for c in (await rig.store.controls("tiny")).rows}
    assert ctl[RECONCILE_KEY]["state"] == "reconciled" and "at" in ctl[RECONCILE_KEY]


async def test_rejections_have_readable_reasons(rig: Rig) -> None:
    await rig.d.run_pass()  # reconcile
    too_big = await rig.signal("AAPL", "buy", "5")  # ~950 > max_order_notional 500
    old = await rig.signal("NVDA", "buy", "1",
                           created_at=datetime.now(UTC) - timedelta(seconds=600))
    bad_limit = await rig.signal("NVDA", "buy", "1", order_type="limit", limit_price="1")
    await rig.store.pool.execute("UPDATE signals SET order_type = 'stop' WHERE id = $1",
                                 bad_limit)
    await rig.d.run_pass()
    r = await rig.row(too_big)
    assert r.status == "rejected"
    assert r.reason is not None and r.reason.startswith("max_order_notional:")
    assert "exceeds max_order_notional 500.00" in r.reason
    r = await rig.row(old)
    assert r.status == "expired" and r.reason is not None and "older than signal_ttl_s" in r.reason
    r = await rig.row(bad_limit)
    assert r.status == "rejected" and r.reason is not None
    assert "bad signal" in r.reason and "'stop'" in r.reason

    rig.sim.faults.set_clock("closed")
    closed = await rig.signal("NVDA", "buy", "1")
    await rig.d.run_pass()
    r = await rig.row(closed)
    assert r.status == "rejected" and r.reason == "market: market closed"

    rig.sim.faults.set_clock("open")
    await rig.switch(KillSwitch.HALT)
    halted = await rig.signal("NVDA", "buy", "1")
    await rig.d.run_pass()
    r = await rig.row(halted)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith("kill_switch: kill switch halt: new entries refused")

    await rig.switch(KillSwitch.OFF)
    await rig.store.set_control("tiny", DRIFT_KEY, {"blocked": True, "reason": "test"},
                                by="test")
    drift = await rig.signal("NVDA", "buy", "1")
    await rig.d.run_pass()
    r = await rig.row(drift)
    assert r.status == "rejected" and r.reason is not None and r.reason.startswith("drift:")
    for sid in (too_big, old, bad_limit, closed, halted, drift):
        assert await rig.orders_for(sid) == 0, sid


async def _fill(rig: Rig, symbol: str, qty: str) -> None:
    """A signal's buy, filled at the broker and its fill stored (a managed lot)."""
    sid = await rig.signal(symbol, "buy", qty)
    await rig.d.run_pass()
    assert (await rig.row(sid)).status == "submitted"
    await eventually(lambda: _eq(rig.position(symbol), Decimal(qty)), f"{symbol} filled")
    await eventually(lambda: _managed_is(rig, symbol, Decimal(qty)), f"{symbol} fill stored")


async def _managed_is(rig: Rig, symbol: str, qty: Decimal) -> bool:
    got = await managed_quantities(rig.store.pool, rig.account, [symbol])
    return got.get(symbol, Decimal(0)) == qty


async def _eq(x: Awaitable[Decimal], v: Decimal) -> bool:
    return await x == v


async def test_reduce_only_allows_a_closing_sell_and_refuses_a_buy(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "2")
    # An open entry order far below the market: reduce-only cancels it.
    entry = await rig.broker.submit_order(OrderRequest(
        "AMD", Side.BUY, "manual-entry-1", qty=Decimal(1), order_type=OrderType.LIMIT,
        limit_price=Decimal("1.00")))
    assert entry.order is not None
    await rig.switch(KillSwitch.REDUCE_ONLY)
    buy = await rig.signal("NVDA", "buy", "1")
    sell = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    b, s = await rig.row(buy), await rig.row(sell)
    assert b.status == "rejected" and b.reason is not None
    assert "reduce-only" in b.reason and "increase" in b.reason
    assert s.status == "submitted", s.reason
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "position closed")
    o = await rig.broker.get_order(entry.order.id)
    assert o is not None and o.status == "canceled"


async def test_flatten_all_cancels_orders_closes_positions_and_stays_flat(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "1")
    await _fill(rig, "AMD", "1")
    open_res = await rig.broker.submit_order(OrderRequest(
        "AAPL", Side.BUY, "manual-open-1", qty=Decimal(1), order_type=OrderType.LIMIT,
        limit_price=Decimal("1.00")))
    assert open_res.order is not None
    await rig.switch(KillSwitch.FLATTEN_ALL)

    async def flat() -> bool:
        await rig.d.run_pass()
        return (not await rig.broker.list_positions()
                and not await rig.broker.list_orders(status="open"))

    await eventually(flat, "account flat at the simulator")
    st = rig.sim.engine.states["tiny"]
    n_orders = len(st.orders)
    closes = rig.d.stats.closed
    assert closes >= 2
    # Idempotent: more passes while flat send nothing; entries are refused, and so is a
    # "sell" that no longer has anything to exit.
    sid = await rig.signal("NVDA", "buy", "1")
    exit_sid = await rig.signal("NVDA", "sell", "1")
    for _ in range(3):
        await rig.d.run_pass()
    assert len(st.orders) == n_orders and rig.d.stats.closed == closes
    for s in (sid, exit_sid):
        r = await rig.row(s)
        assert r.status == "rejected" and r.reason is not None
        assert r.reason.startswith("kill_switch: kill switch flatten-all"), r.reason


async def test_flatten_does_not_close_twice_while_a_close_is_working(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "1")
    rig.sim.faults.set_clock("closed")  # closing orders are accepted but cannot fill
    await rig.switch(KillSwitch.FLATTEN)
    await rig.d.run_pass()
    # An exit signal for the same share while the closing order works is refused by the
    # kill switch gate (which comes before the market gate): its share is already being
    # sold, so the order would open a short, an entry.
    exit_sid = await rig.signal("NVDA", "sell", "1")
    await rig.d.run_pass()
    r = await rig.row(exit_sid)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith("kill_switch: kill switch flatten"), r.reason
    assert "open" in r.reason and await rig.orders_for(exit_sid) == 0
    opened = [o for o in await rig.broker.list_orders(status="open") if o.side == "sell"]
    assert len(opened) == 1 and rig.d.stats.closed == 1
    rig.sim.faults.set_clock("open")
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "closed once open")
    await rig.d.run_pass()
    assert rig.d.stats.closed == 1


async def test_504_after_processing_gives_exactly_one_order(rig: Rig) -> None:
    await rig.d.run_pass()
    sid = await rig.signal("NVDA", "buy", "1")
    rig.sim.faults.fail_next(n=1, status=504, path="/v2/orders", method="POST",
                             after_processing=True)
    report = await rig.d.run_pass()
    assert [o.status for o in report.outcomes] == ["submitted"]
    assert await rig.orders_for(sid) == 1
    for _ in range(2):
        await rig.d.run_pass()
    assert await rig.orders_for(sid) == 1


async def test_unknown_is_settled_later_never_resent_blindly(rig: Rig) -> None:
    await rig.d.run_pass()
    # 1) processed, but neither the answer nor the lookup gets through: unknown.
    sid = await rig.signal("NVDA", "buy", "1")
    rig.sim.faults.fail_next(n=1, status=500, path="/v2/orders", method="POST",
                             after_processing=True)
    rig.sim.faults.fail_next(n=20, status=500, path="/v2/orders:by_client_order_id")
    report = await rig.d.run_pass()
    assert [o.status for o in report.outcomes] == ["unknown"]
    assert await rig.orders_for(sid) == 1
    # While the lookup keeps failing it stays unknown, and nothing is sent again.
    await rig.d.run_pass()
    assert (await rig.row(sid)).status == "unknown" and await rig.orders_for(sid) == 1
    rig.sim.faults.clear()
    await rig.d.run_pass()
    r = await rig.row(sid)
    assert r.status == "submitted" and r.broker_order_id is not None
    assert await rig.orders_for(sid) == 1

    # 2) not processed and the lookup says 404: unknown, then re-sent with the SAME id.
    sid2 = await rig.signal("NVDA", "buy", "1")
    rig.sim.faults.fail_next(n=1, status=500, path="/v2/orders", method="POST")
    report = await rig.d.run_pass()
    assert [o.status for o in report.outcomes] == ["unknown"]
    assert await rig.orders_for(sid2) == 0
    await rig.d.run_pass()
    r = await rig.row(sid2)
    assert r.status == "submitted" and await rig.orders_for(sid2) == 1
    assert r.attempts == 2


async def test_leftovers_from_a_previous_life_are_settled(rig: Rig) -> None:
    on_broker = await rig.signal("NVDA", "buy", "1")
    never_sent = await rig.signal("AMD", "buy", "1")
    for sid in (on_broker, never_sent):
        await rig.store.pool.execute(
            "UPDATE signals SET status = 'claimed', attempts = 1 WHERE id = $1", sid)
    cid = signal_client_order_id("tiny", on_broker)
    res = await rig.broker.submit_order(OrderRequest("NVDA", Side.BUY, cid, qty=Decimal(1)))
    assert res.order is not None
    report = await rig.d.run_pass()
    r = await rig.row(on_broker)
    assert r.status == "submitted" and r.broker_order_id == res.order.id
    assert [(o.signal_id, o.status) for o in report.outcomes] == [(never_sent, "submitted")]
    assert await rig.orders_for(on_broker) == 1 and await rig.orders_for(never_sent) == 1
    ctl = {c.key: c.value for c in (await rig.store.controls("tiny")).rows}
    assert ctl[RECONCILE_KEY]["settled_submitted"] == 1
    assert ctl[RECONCILE_KEY]["requeued"] == 1


async def test_another_accounts_signals_are_never_touched(rig: Rig, sim: Simulator) -> None:
    large_broker = make_broker(sim, "large")
    try:
        listener = SignalListener(rig.store.url, "tiny", rig.d.wake)
        task = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.connected.wait(), 10)
        seen = listener.notifications
        theirs = await rig.signal("NVDA", "buy", "1", account="large")
        ours = await rig.signal("NVDA", "buy", "1")
        await eventually(lambda: listener.notifications == seen + 1, "tiny NOTIFY")
        for _ in range(2):
            await rig.d.run_pass()
        assert (await rig.row(ours)).status == "submitted"
        r = await rig.row(theirs)
        assert r.status == "pending" and r.client_order_id is None and r.attempts == 0
        assert await rig.orders_for(theirs, "large") == 0
        assert listener.notifications == seen + 1  # large's insert did not wake tiny
        # large's own dispatcher does take it.
        d_large = dispatcher(rig.store, large_broker, "large")
        await d_large.run_pass()
        assert (await rig.row(theirs)).status == "submitted"
        assert await rig.orders_for(theirs, "large") == 1
        listener.request_stop()
        await asyncio.wait_for(task, 10)
    finally:
        large_broker.close()


async def test_claims_skip_locked_rows(rig: Rig) -> None:
    sids = [await rig.signal("NVDA", "buy", "1") for _ in range(3)]
    async with rig.store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT id FROM signals WHERE id = $1 FOR UPDATE", sids[0])
        claimed = await sq.claim_pending(rig.store.pool, "tiny", 10)
        assert [s.id for s in claimed] == sids[1:]
        assert all(s.status == "claimed" and s.attempts == 1 for s in claimed)
    again = await sq.claim_pending(rig.store.pool, "tiny", 10)
    assert [s.id for s in again] == sids[:1]
    assert await sq.claim_pending(rig.store.pool, "large", 10) == []


async def test_exits_never_sell_the_same_shares_twice(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "2")
    # Two exits for the same shares in one batch: the second would open a short.
    first = await rig.signal("NVDA", "sell", "2")
    second = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    assert (await rig.row(first)).status == "submitted"
    r = await rig.row(second)
    assert r.status == "rejected" and r.reason is not None and r.reason.startswith("short:")
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "position closed")

    # Across passes: shares held by a working sell order are not available to a signal.
    await _fill(rig, "NVDA", "2")
    working = await rig.broker.submit_order(OrderRequest(
        "NVDA", Side.SELL, "manual-exit-1", qty=Decimal(2), order_type=OrderType.LIMIT,
        limit_price=Decimal("100000")))
    assert working.order is not None
    third = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    r = await rig.row(third)
    assert r.status == "rejected" and r.reason is not None and r.reason.startswith("short:")
    assert await rig.orders_for(second) == 0 and await rig.orders_for(third) == 0


async def test_a_late_reduce_only_exit_never_opens_a_short_even_where_shorts_are_allowed(
        rig: Rig) -> None:
    rig.d = dispatcher(rig.store, rig.broker, "tiny", replace(TINY_LIMITS, allow_short=True))
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "2")
    # Two exits of the same shares in one batch (a strategy's exit and a late repeat of
    # it): the first closes the position; the second would open a short, which this account
    # allows, but it is an exit: refused, and never sent.
    first = await rig.signal("NVDA", "sell", "2", reduce_only=True)
    late = await rig.signal("NVDA", "sell", "2", reduce_only=True)
    grow = await rig.signal("NVDA", "buy", "1", reduce_only=True)  # would add to the long
    await rig.d.run_pass()
    assert (await rig.row(first)).status == "submitted"
    for sid in (late, grow):
        r = await rig.row(sid)
        assert r.status == "rejected" and r.reduce_only, r
        assert r.reason is not None and r.reason.startswith("reduce_only:"), r.reason
        assert await rig.orders_for(sid) == 0
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "position closed")

    # Flat now: a reduce-only exit is refused here; the same sell without the flag passes
    # every gate and goes to the broker (which refuses shorts to an account this small).
    flat_exit = await rig.signal("NVDA", "sell", "1", reduce_only=True)
    short = await rig.signal("NVDA", "sell", "1")
    await rig.d.run_pass()
    r = await rig.row(flat_exit)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith("reduce_only:") and "position 0, open" in r.reason, r.reason
    assert await rig.orders_for(flat_exit) == 0
    r = await rig.row(short)
    assert r.reason is not None and r.reason.startswith("broker:"), r


async def test_an_exit_signal_first_cancels_the_protective_stop_holding_its_shares(
        rig: Rig) -> None:
    """The position manager's stop rests for the whole position (qty_available 0): an exit
    signal is still an exit, the stop is cancelled (confirmed) first, then the sell goes."""
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "2")
    stop_cid = stop_client_order_id("tiny", "NVDA", datetime.now(UTC), 1)
    stop = await rig.broker.submit_order(OrderRequest(
        "NVDA", Side.SELL, stop_cid, qty=Decimal(2), order_type=OrderType.STOP,
        stop_price=Decimal("1"), time_in_force=TimeInForce.GTC))
    assert stop.outcome == "accepted" and stop.order is not None
    held = await rig.broker.get_position("NVDA")
    assert held is not None and held.qty_available == 0
    sid = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    r = await rig.row(sid)
    assert r.status == "submitted", r.reason
    after = await rig.broker.get_order(stop.order.id)
    assert after is not None and after.status == "canceled" and after.filled_qty == 0
    assert rig.d.stats.stops_cleared == 1
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "position closed")


async def test_flatten_allows_an_exit_of_what_remains(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "2")
    # The broker refuses to close the position (twice: this pass's and the next one's
    # close): it remains; an exit signal may close it.
    rig.sim.faults.refuse_next_orders(n=2, account="tiny", symbol="NVDA", status=403,
                                      code=40310000, message="asset is halted")
    await rig.switch(KillSwitch.FLATTEN)
    await rig.d.run_pass()
    assert rig.d.stats.closed == 0 and await rig.position("NVDA") == Decimal(2)
    entry = await rig.signal("AMD", "buy", "1")
    exit_sid = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    assert (await rig.row(exit_sid)).status == "submitted"
    r = await rig.row(entry)
    assert r.status == "rejected" and r.reason is not None and "flatten" in r.reason
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "exited")


async def test_listener_reconnects_after_a_postgres_restart(pg_dedicated: EmbeddedPostgres) -> None:
    url = pg_dedicated.url()
    woken: list[float] = []
    listener = SignalListener(url, "tiny", lambda: woken.append(1.0),
                              backoff=Backoff(initial_s=0.05, max_s=0.2, max_attempts=0,
                                              deadline_s=None))
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        assert listener.connects == 1 and len(woken) == 1  # the catch-up wake on connect
        await asyncio.to_thread(pg_dedicated.stop, mode="fast")
        await eventually(lambda: not listener.connected.is_set(), "connection lost noticed")
        await asyncio.to_thread(pg_dedicated.start)
        await eventually(lambda: listener.connects == 2, "reconnected", timeout_s=30)
        assert len(woken) == 2  # inserts made while disconnected are not missed
        conn = await connect(url)
        try:
            await conn.execute("INSERT INTO signals (account, symbol, side, qty) "
                               "VALUES ('large', 'NVDA', 'buy', 1), ('tiny', 'NVDA', 'buy', 1)")
        finally:
            await conn.close()
        await eventually(lambda: listener.notifications == 1, "NOTIFY after reconnect")
        assert len(woken) == 3  # large's row did not wake tiny
    finally:
        listener.request_stop()
        await asyncio.wait_for(task, 10)


async def test_the_tick_dispatches_without_notify(rig: Rig) -> None:
    """No LISTEN connection: the ticker alone picks the signal up, and records its runs."""

    async def job(slot: object) -> None:
        await rig.d.run_pass()

    ticker = Ticker("dispatcher", 0.2, job, process="tiny-dispatcher", account="tiny",
                    role="dispatcher", ledger=rig.store)
    task = asyncio.create_task(ticker.run())
    try:
        sid = await rig.signal("NVDA", "buy", "1")
        await eventually(lambda: _status(rig, sid, "submitted"), "dispatched by a tick")
        assert await rig.orders_for(sid) == 1

        async def ran() -> bool:
            n = await rig.store.pool.fetchval("SELECT count(*) FROM runs WHERE process = "
                                              "'tiny-dispatcher' AND outcome = 'ok'")
            return bool(n >= 1)

        await eventually(ran, "an 'ok' run in the ledger")
    finally:
        ticker.request_stop()
        await asyncio.wait_for(task, 10)


def test_a_pass_claims_what_its_rest_budget_serves_promptly() -> None:
    from ops.roles.dispatcher import STATE_CALLS, batch_for_budget

    # A budget of 66/min, burst 6 -> 6 + 5.5 calls in 5 s, 4 of them for state.
    assert batch_for_budget(66, 6) == 7
    # Whatever the budget, at least one signal per pass; more budget, bigger batches.
    assert batch_for_budget(2, 1) == 1
    assert batch_for_budget(200, 20) > batch_for_budget(66, 6)
    # A batch never costs more calls than the budget serves within the pass target.
    for rate, burst in [(66, 6), (200, 20), (600, 50)]:
        n = batch_for_budget(rate, burst, pass_s=5.0)
        assert n + STATE_CALLS <= burst + rate / 60 * 5.0 + 1


async def test_a_slow_broker_defers_the_rest_of_a_pass_never_sends_twice(rig: Rig) -> None:
    # A pass is bounded in time: with every REST call slow, a pass sends what fits in its
    # budget, gives the other claimed signals back (unsent) and asks for another pass.
    d = Dispatcher(store=rig.store, broker=rig.broker, account="tiny",
                   limits=lambda: TINY_LIMITS, kill_switch=rig.d._kill_switch,
                   process="tiny-dispatcher", pass_budget_s=0.3)
    await d.run_pass()  # reconcile
    sids = [await rig.signal("NVDA", "buy", "1") for _ in range(4)]
    rig.sim.faults.set_rest_latency(0.2)
    report = await d.run_pass()
    sent = {o.signal_id for o in report.outcomes}
    assert 1 <= len(sent) < len(sids), report.outcomes
    for sid in sorted(set(sids) - sent):
        r = await rig.row(sid)
        assert r.status == "pending" and "budget" in (r.reason or ""), r
        assert await rig.orders_for(sid) == 0
    assert d.stats.deferred == len(sids) - len(sent)
    await asyncio.wait_for(d.woken(), 1)  # the next pass was asked for at once
    for _ in range(len(sids)):
        if [(await rig.row(s)).status for s in sids] == ["submitted"] * len(sids):
            break
        await d.run_pass()
    rig.sim.faults.set_rest_latency(0)
    assert [(await rig.row(s)).status for s in sids] == ["submitted"] * len(sids)
    assert [await rig.orders_for(s) for s in sids] == [1] * len(sids)


def test_the_keys_rest_budget_is_shared_by_need_and_never_overspent() -> None:
    from ops.roles.runtime import REST_WEIGHTS, ROLES, broker_settings
    from ops.runtime.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "conf" / "ops.toml")
    users = [r for r in ROLES if r != "monitor"]  # the monitor uses no API key
    per_min = {r: broker_settings(config, r).rate_limit_per_min for r in users}
    burst = {r: broker_settings(config, r).rate_limit_burst for r in users}
    assert set(REST_WEIGHTS) == set(users)
    # Every process using one key together stays within the key's budget...
    assert sum(per_min.values()) <= config.broker.rate_limit_per_min
    assert sum(burst.values()) <= config.broker.rate_limit_burst
    # ...and the dispatcher, which sends every order, gets the largest share.
    assert max(per_min, key=lambda r: per_min[r]) == "dispatcher"


async def test_an_order_filling_between_two_reads_is_never_missed(store: Store) -> None:
    """Two signals in two passes never size against one snapshot (issue 13.5): the first
    order fills while the second pass reads the account. The pass reads the open orders
    before the positions, so the fill is in one of the two reads (here: the positions),
    never in neither. The simulator steps only when told, and the open-orders read hangs
    until the fill is done, so the interleaving is exact."""
    from ops.sim import SimConfig, default_accounts

    sim = Simulator(SimConfig(seed=7, clock="open", accounts=default_accounts(seed=7),
                              market_step_s=None, fill_lot=Decimal(100)))
    await sim.start(host="127.0.0.1", port=0)
    broker = make_broker(sim, "large")
    try:
        await broker.bind_account(sim.account("large").account_number)
        spy = sim.market.price("SPY")
        limit = (spy * Decimal("0.95")).quantize(Decimal("0.01"))  # rests below the market
        limits = RiskLimits(max_order_notional=spy * 4,
                            max_symbol_notional=limit * Decimal("4.5"),
                            max_open_positions=5, daily_loss_limit=Decimal(5000),
                            max_qty=Decimal(10))

        async def ks() -> KillSwitch:
            return KillSwitch.OFF

        d = Dispatcher(store=store, broker=broker, account="large", limits=lambda: limits,
                       kill_switch=ks, process="large-dispatcher", batch=1)
        rig = Rig(sim, store, broker, d, "large")
        await d.run_pass()  # reconcile
        first = await rig.signal("SPY", "buy", "3", order_type="limit",
                                 limit_price=str(limit))
        second = await rig.signal("SPY", "buy", "3", order_type="limit",
                                  limit_price=str(limit))
        await d.run_pass()
        assert (await rig.row(first)).status == "submitted"
        assert (await rig.row(second)).status == "pending"
        assert [o.status for o in await broker.list_orders(status="open")] == ["new"]

        sim.faults.hang_next(n=1, path="/v2/orders", method="GET")
        second_pass = asyncio.create_task(d.run_pass())
        await eventually(lambda: sim.faults.rest.hung_now == 1, "the open-orders read held")
        sim.market.set_price("SPY", limit * Decimal("0.98"))
        sim.engine.process()  # the resting buy fills now, between the two reads
        assert sim.engine.states["large"].positions["SPY"].qty == 3
        sim.faults.release_hangs()
        await asyncio.wait_for(second_pass, 15)

        r = await rig.row(second)
        assert r.status == "rejected", r
        assert r.reason is not None and r.reason.startswith("max_symbol_notional:"), r.reason
        assert "position" in r.reason
        assert await rig.orders_for(first) == 1 and await rig.orders_for(second) == 0
        assert d.stats.inflight_lookups >= 1  # the first order, gone from the listing
        assert d.counters()["inflight"] == 0  # ... and seen filled: no longer in flight
    finally:
        broker.close()
        await sim.stop()


# --- refused closes and exits (issue 13.3) -----------------------------------------------------


async def _incidents(rig: Rig, kind: str, symbol: str) -> list[dict[str, Any]]:
    rows = await rig.store.pool.fetch(
        "SELECT kind, account, process, detail, closed_at, close_reason, closed_by, "
        "seen_by FROM incidents "
        "WHERE dedupe_key = $1 ORDER BY opened_at",
        refusals.dedupe_key(kind, rig.account, symbol))
    return [dict(r) for r in rows]


async def test_refused_flatten_close_is_one_incident_until_a_close_is_accepted(
        rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "1")
    rig.sim.faults.refuse_next_orders(n=2, account="tiny", symbol="NVDA")  # PDT, twice
    await rig.switch(KillSwitch.FLATTEN)
    await rig.d.run_pass()  # refused: the incident is there after this one pass
    [inc] = await _incidents(rig, refusals.FLATTEN_REFUSED, "NVDA")
    assert inc["closed_at"] is None and inc["account"] == "tiny"
    assert inc["process"] == "tiny-dispatcher"
    for needle in ("the broker refused the flatten close of 1 NVDA (sell) on tiny",
                   "(order ops-tiny-flat-NVDA-",
                   "pattern-day-trading protection (403 40310100)",
                   "close it by hand or wait"):
        assert needle in inc["detail"], (needle, inc["detail"])
    assert rig.d.stats.flatten_refused == 1 and rig.d.counters()["flatten_refused_open"] == 1
    await rig.d.run_pass()  # refused again: the same incident, still one
    incs = await _incidents(rig, refusals.FLATTEN_REFUSED, "NVDA")
    assert len(incs) == 1 and incs[0]["closed_at"] is None
    assert rig.d.stats.flatten_refused == 2
    await rig.d.run_pass()  # the refusal is over: the close is accepted
    [inc] = await _incidents(rig, refusals.FLATTEN_REFUSED, "NVDA")
    assert inc["closed_at"] is not None and "was accepted" in inc["close_reason"]
    assert inc["closed_by"] == "tiny-dispatcher"
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "closed")
    assert rig.d.counters()["flatten_refused_open"] == 0


async def test_refused_flatten_close_clears_when_gone_or_flatten_ends(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "1")
    await _fill(rig, "AMD", "1")
    rig.sim.faults.refuse_next_orders(n=100, account="tiny", side="sell",
                                      status=401, code=40110000,
                                      message="request is not authorized")
    rig.d.secret_id = "ops-pipeline/alpaca/tiny"
    await rig.switch(KillSwitch.FLATTEN)
    await rig.d.run_pass()
    for sym in ("NVDA", "AMD"):
        [inc] = await _incidents(rig, refusals.FLATTEN_REFUSED, sym)
        assert "rotate secret ops-pipeline/alpaca/tiny" in inc["detail"]
    # NVDA goes away by other means: its incident closes at the next pass.
    rig.sim.faults.clear()
    sold = await rig.broker.submit_order(OrderRequest("NVDA", Side.SELL, "by-hand-1",
                                                      qty=Decimal(1)))
    assert sold.outcome == "accepted"
    await eventually(lambda: _eq(rig.position("NVDA"), Decimal(0)), "NVDA sold by hand")
    rig.sim.faults.refuse_next_orders(n=100, account="tiny", side="sell")
    await rig.d.run_pass()
    [nvda] = await _incidents(rig, refusals.FLATTEN_REFUSED, "NVDA")
    assert nvda["closed_at"] is not None and "NVDA is gone at the broker" in nvda["close_reason"]
    [amd] = await _incidents(rig, refusals.FLATTEN_REFUSED, "AMD")
    assert amd["closed_at"] is None  # still refused (now PDT): the same incident
    assert "pattern-day-trading" in amd["detail"]
    # The operator lifts flatten: no close is attempted, the incident has no cause left.
    await rig.switch(KillSwitch.HALT)
    await rig.d.run_pass()
    [amd] = await _incidents(rig, refusals.FLATTEN_REFUSED, "AMD")
    assert amd["closed_at"] is not None and "no longer flatten (now halt)" in amd["close_reason"]
    assert await rig.position("AMD") == Decimal(1)


async def test_shares_held_by_an_order_being_canceled_are_not_an_incident(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "1")
    # One of the pipeline's own orders (an exit resting far above the market): flatten
    # cancels it, and the broker holds its shares until the cancel is through.
    working = await rig.broker.submit_order(OrderRequest(
        "NVDA", Side.SELL, "ops-tiny-exit-manual-2", qty=Decimal(1),
        order_type=OrderType.LIMIT, limit_price=Decimal("100000")))
    assert working.order is not None
    # A real broker answers the close "insufficient qty" while the cancel is pending.
    rig.sim.faults.refuse_next_orders(
        n=1, account="tiny", symbol="NVDA", code=40310000,
        message="insufficient qty available for order (requested: 1, available: 0)")
    await rig.switch(KillSwitch.FLATTEN)
    await rig.d.run_pass()
    assert rig.d.stats.canceled == 1 and rig.d.stats.closed == 0
    await rig.d.run_pass()
    assert rig.d.stats.closed == 1
    assert await _incidents(rig, refusals.FLATTEN_REFUSED, "NVDA") == []


async def test_a_refused_exit_signal_is_an_incident_a_refused_entry_is_not(rig: Rig) -> None:
    await rig.d.run_pass()
    await _fill(rig, "NVDA", "2")
    rig.sim.faults.refuse_next_orders(n=1, account="tiny", side="sell")
    exit_sid = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    r = await rig.row(exit_sid)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith("broker: trade denied due to pattern day trading protection")
    [inc] = await _incidents(rig, refusals.EXIT_REFUSED, "NVDA")
    assert inc["closed_at"] is None
    assert (f"the broker refused exit signal {exit_sid} of 2 NVDA (sell) on tiny "
            f"(order {signal_client_order_id('tiny', exit_sid)})") in inc["detail"]
    # An entry the broker refuses stays a signal rejection.
    rig.sim.faults.refuse_next_orders(n=1, account="tiny", side="buy")
    entry = await rig.signal("AMD", "buy", "1")
    await rig.d.run_pass()
    assert (await rig.row(entry)).status == "rejected"
    assert await _incidents(rig, refusals.EXIT_REFUSED, "AMD") == []
    # A later exit of NVDA is accepted: the incident closes.
    again = await rig.signal("NVDA", "sell", "2")
    await rig.d.run_pass()
    assert (await rig.row(again)).status == "submitted"
    [inc] = await _incidents(rig, refusals.EXIT_REFUSED, "NVDA")
    assert inc["closed_at"] is not None and "accepted by the broker" in inc["close_reason"]


async def test_orders_in_flight_are_settled_by_one_listing_after_a_burst(rig: Rig) -> None:
    await rig.d.run_pass()
    symbols = ("NVDA", "AMD", "AAPL")
    limits = {sym: (rig.sim.market.price(sym) * Decimal("0.9")).quantize(Decimal("0.01"))
              for sym in symbols}
    sids = [await rig.signal(sym, "buy", "1", order_type="limit",
                             limit_price=str(limits[sym])) for sym in symbols]
    await rig.d.run_pass()
    assert [(await rig.row(s)).status for s in sids] == ["submitted"] * 3
    assert rig.d.counters()["inflight"] == 3  # resting below the market
    for sym in symbols:  # all three fill: they leave the open listing
        rig.sim.market.set_price(sym, limits[sym] * Decimal("0.98"))
    rig.sim.engine.process()
    async def all_filled() -> bool:
        return all([await rig.position(sym) == Decimal(1) for sym in symbols])
    await eventually(all_filled, "the three limit buys filled")
    later = await rig.signal("NVDA", "sell", "1")
    await rig.d.run_pass()
    assert (await rig.row(later)).status == "submitted"
    # One listing of recent orders showed the three finished, without a lookup each.
    assert rig.d.stats.inflight_lookups == 0
    assert rig.d.counters()["inflight"] == 0
