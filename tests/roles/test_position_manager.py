"""PositionManager in-process against the real simulator, real alpaca-py and real Postgres.

A `Rig` is one account (`large`) with a bound Broker, a Store on a fresh database, and a
real TradeStream recording every trade update into order_events/orders (standing in for
the stream role). Fills happen at the simulator (market orders fill on submit while its
clock is open); prices are moved with `sim.market.set_price`; the position manager's
clock is injectable so max-hold needs no waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from ops.broker import Broker, BrokerEndpoints, BrokerSettings, TradeStream
from ops.core import drift, refusals
from ops.core.backoff import Backoff
from ops.core.exits import NEW_YORK, ExitRule, ExitRules, exit_client_order_id
from ops.core.models import KillSwitch, OptionSymbol, OrderRequest, Side, TradeUpdate
from ops.roles.position_manager import (
    DRIFT_CONTROL,
    DRIFT_KIND,
    PositionManager,
    drift_dedupe_key,
    exit_prefix,
)
from ops.runtime.credentials import Credentials
from ops.sim import Simulator
from ops.store import Store
from ops.store import fills as fq
from ops.store import positions as pq
from ops.store.store import order_op, trade_update_op
from tests.support import eventually

ACCOUNT = "large"
FAST = BrokerSettings(rest_timeout_s=2.0,
                      retry=Backoff(initial_s=0.05, max_s=0.2, max_attempts=4, deadline_s=10))


@dataclass
class Rig:
    sim: Simulator
    store: Store
    broker: Broker
    stream: TradeStream
    rules: ExitRules = field(default_factory=ExitRules)
    offset: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def manager(self, **kw: Any) -> PositionManager:
        """A fresh PositionManager (a new instance = a restarted process)."""
        return PositionManager(account=ACCOUNT, store=self.store, broker=self.broker,
                               process=f"{ACCOUNT}-position-manager",
                               exit_rules=lambda: self.rules, now=self.now, **kw)

    async def buy(self, symbol: str, qty: int | Decimal, side: Side = Side.BUY, *,
                  by_hand: bool = False) -> None:
        """An order the pipeline placed (its client_order_id prefix: a managed lot), or,
        `by_hand`, one placed outside it (an external lot)."""
        prefix = "web-" if by_hand else f"ops-{ACCOUNT}-test-"
        res = await self.broker.submit_order(OrderRequest(
            symbol=symbol, side=side, qty=Decimal(qty),
            client_order_id=f"{prefix}{uuid.uuid4().hex[:12]}"))
        assert res.outcome == "accepted", res

    async def fills_stored(self) -> int:
        return int(await self.store.pool.fetchval(
            "SELECT count(*) FROM fills WHERE account = $1", ACCOUNT))

    async def wait_fills(self, n: int) -> None:
        async def enough() -> bool:
            return await self.fills_stored() >= n
        await eventually(enough, f"{n} fill events stored")

    async def control(self, key: str) -> Any:
        snap = await self.store.controls(ACCOUNT)
        return next((c.value for c in snap.rows if c.key == key), None)

    async def open_drift_incidents(self) -> list[str]:
        snap = await self.store.open_incidents()
        found = [i for i in snap.rows if i.kind == DRIFT_KIND]
        assert all(i.dedupe_key == drift_dedupe_key(ACCOUNT) and i.account == ACCOUNT
                   for i in found)
        return [i.detail for i in found]

    def sim_exit_orders(self, symbol: str) -> list[str]:
        st = self.sim.engine.states[ACCOUNT]
        return [o.client_order_id for o in st.orders.values()
                if o.symbol == symbol and o.client_order_id.startswith(exit_prefix(ACCOUNT))]


@pytest.fixture
async def rig(sim: Simulator, ops_store: Store) -> AsyncIterator[Rig]:
    spec = sim.account(ACCOUNT)
    creds = Credentials("test/large", ACCOUNT, spec.key_id, spec.secret)
    endpoints = BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url)
    broker = Broker(endpoints, creds, FAST)
    await broker.bind_account(spec.account_number)

    async def on_update(u: TradeUpdate) -> None:
        await ops_store.write_many([trade_update_op(ACCOUNT, u), order_op(ACCOUNT, u.order)])

    async def on_bad(msg: object, why: str) -> None:
        raise AssertionError(f"bad stream message: {why}")

    stream = TradeStream(endpoints, creds, on_update, on_bad)
    await stream.start()
    await sim.wait_stream(ACCOUNT)
    try:
        yield Rig(sim, ops_store, broker, stream)
    finally:
        await stream.stop()
        broker.close()


def soon_option(underlying: str, days: int, strike: int) -> str:
    expiry = datetime.now(NEW_YORK).date() + timedelta(days=days)
    return str(OptionSymbol(underlying, expiry, "C", Decimal(strike)))


# --- sync -----------------------------------------------------------------------------------


async def test_positions_synced_with_history_for_stock_and_option(rig: Rig) -> None:
    option = soon_option("AAPL", 20, 190)
    await rig.buy("AAPL", 5)
    await rig.buy(option, 2)
    await rig.wait_fills(2)
    pm = rig.manager()
    await pm.tick()
    await pm.tick()

    snap = await rig.store.positions(ACCOUNT)
    held = {p.position.symbol: p.position for p in snap.rows}
    assert held["AAPL"].qty == 5
    assert held[option].qty == 2 and held[option].asset_class == "us_option"
    history = await rig.store.pool.fetch(
        "SELECT symbol, count(*) AS n FROM position_history WHERE account = $1"
        " GROUP BY symbol", ACCOUNT)
    assert {r["symbol"]: r["n"] for r in history} == {"AAPL": 2, option: 2}
    states = await rig.store.account_states()
    assert [s.account_number for s in states.rows] == [rig.sim.account(ACCOUNT).account_number]
    assert pm.counters.syncs == 2 and pm.counters.drift_mismatches == 0

    # Closing a position removes it from the current set; history keeps every sync.
    await rig.buy("AAPL", 5, Side.SELL)
    await rig.wait_fills(3)
    await pm.tick()
    snap = await rig.store.positions(ACCOUNT)
    assert [p.position.symbol for p in snap.rows] == [option]
    assert await rig.store.pool.fetchval(
        "SELECT count(*) FROM position_history WHERE account = $1 AND symbol = $2",
        ACCOUNT, option) == 3
    assert await rig.open_drift_incidents() == []


# --- drift ----------------------------------------------------------------------------------


async def test_drift_blocks_entries_and_clears_when_the_missing_fill_arrives(rig: Rig) -> None:
    """No stream role runs here, so no fill check answers the position manager's request:
    it blocks after `drift_strikes_max` syncs and says the database may be missing fills."""
    await rig.buy("AAPL", 5)
    await rig.wait_fills(1)
    pm = rig.manager(drift_strikes_max=3)
    await pm.tick()  # baseline adopted from the broker (unconfirmed)
    await pm.tick()  # agrees: confirmed
    base = await pq.load_baseline(rig.store.pool, ACCOUNT)
    assert base is not None and base.confirmed and base.positions == {"AAPL": Decimal(5)}

    # Behind our back: the broker fills 3 more, and we never hear of it (stream muted).
    rig.sim.faults.mute(ACCOUNT)
    await rig.buy("AAPL", 3)
    await pm.tick()  # first sighting: could be a fill in flight, so no alarm yet
    assert await rig.control(DRIFT_CONTROL) is None
    assert await rig.open_drift_incidents() == []
    # ... and the stream role is asked for a fill completeness check right away.
    assert await rig.store.pool.fetchval(
        "SELECT requested_by FROM fill_check_requests WHERE account = $1", ACCOUNT) \
        == f"{ACCOUNT}-position-manager"
    await pm.tick()  # unexplained, but no fill check has run since: not blamed yet
    assert await rig.control(DRIFT_CONTROL) is None
    await pm.tick()  # drift_strikes_max reached with no check: block and incident
    value = await rig.control(DRIFT_CONTROL)
    assert value["blocked"] is True
    assert "AAPL expected 5 actual 8" in value["reason"]
    assert "may be missing fills" in value["reason"]
    assert value["symbols"] == {"AAPL": {"expected": "5", "actual": "8"}}
    [detail] = await rig.open_drift_incidents()
    assert "AAPL expected 5 actual 8" in detail
    # The dispatcher's reading of the control blocks entries.
    from ops.roles.dispatcher import drift_blocked
    assert drift_blocked(value)
    # The positions table shows the broker's truth; the block says it is unexplained.
    snap = await rig.store.positions(ACCOUNT)
    assert [p.position.qty for p in snap.rows] == [8]
    await pm.tick()  # repeated drift: still one incident, control unchanged
    assert len(await rig.open_drift_incidents()) == 1

    # The missing events arrive (as a stream backfill would bring them): consistent again.
    assert rig.sim.faults.unmute(ACCOUNT, deliver=True) > 0
    await rig.wait_fills(2)
    await pm.tick()
    value = await rig.control(DRIFT_CONTROL)
    assert value["blocked"] is False
    assert await rig.open_drift_incidents() == []
    base = await pq.load_baseline(rig.store.pool, ACCOUNT)
    assert base is not None and base.positions == {"AAPL": Decimal(8)}


async def complete_fill_check(rig: Rig) -> None:
    """What the stream role records after a completeness check that found every fill."""
    now = datetime.now(UTC)
    await fq.save_check(rig.store.pool, fq.FillCheck(ACCOUNT, now, now, 1, 0, (), 0))


async def test_drift_from_a_trade_we_never_record_clears_once_reversed(rig: Rig) -> None:
    await rig.buy("MSFT", 2)
    await rig.wait_fills(1)
    pm = rig.manager()
    await pm.tick()
    await pm.tick()
    await rig.stream.stop()  # nothing is recorded from here on
    await rig.buy("SPY", 1)  # a symbol the database never heard of (bought by hand)
    await pm.tick()
    await complete_fill_check(rig)  # the stream role's check: every broker fill stored
    await pm.tick()
    assert (await rig.control(DRIFT_CONTROL))["blocked"] is True
    [detail] = await rig.open_drift_incidents()
    assert "SPY expected 0 actual 1" in detail
    assert "without a fill the database knows of" in detail  # not the pipeline's gap

    # A restarted position manager still knows it is blocked (read from controls), and
    # lifts the block once the broker matches the database again.
    await rig.buy("SPY", 1, Side.SELL)
    fresh = rig.manager()
    await fresh.tick()
    assert (await rig.control(DRIFT_CONTROL))["blocked"] is False
    assert await rig.open_drift_incidents() == []


async def test_fill_seen_once_before_its_event_is_stored_raises_no_alarm(rig: Rig) -> None:
    await rig.buy("AAPL", 1)
    await rig.wait_fills(1)
    pm = rig.manager()
    await pm.tick()
    await pm.tick()
    rig.sim.faults.mute(ACCOUNT)  # the event is "in flight" during the next sync
    await rig.buy("AAPL", 2)
    await pm.tick()
    assert pm.counters.drift_mismatches == 1
    rig.sim.faults.unmute(ACCOUNT, deliver=True)
    await rig.wait_fills(2)
    await pm.tick()
    assert pm.counters.drift_mismatches == 0
    assert await rig.control(DRIFT_CONTROL) is None
    assert await rig.open_drift_incidents() == []


async def test_drift_check_skipped_while_the_outage_buffer_holds_rows(rig: Rig) -> None:
    pm = rig.manager()
    await pm.tick()
    from ops.store.ops import Op
    # A buffered row (as written during an outage) that Postgres has not seen yet.
    await rig.store.buffer.append([Op("heartbeat", {
        "process": "x", "account": None, "role": "r", "pid": 1, "ts": rig.now().isoformat(),
        "started_at": rig.now().isoformat(), "counters": {}})], "test", [])
    await pm.tick()
    assert pm.counters.drift_skipped >= 1


# --- exits ----------------------------------------------------------------------------------


async def _open_and_track(rig: Rig, symbol: str, qty: int) -> tuple[PositionManager, Decimal]:
    before = await rig.fills_stored()
    await rig.buy(symbol, qty)
    # The fill reaches the store through the stream: until it is there the position reads
    # as external (no pipeline fill behind it) and no exit rule applies (CI, loaded: the
    # max-hold exit was never sent).
    await rig.wait_fills(before + 1)
    pm = rig.manager()
    await pm.tick()
    pos = await rig.broker.get_position(symbol)
    assert pos is not None
    return pm, pos.avg_entry_price


async def _assert_one_exit(rig: Rig, symbol: str, rule: ExitRule) -> None:
    orders = rig.sim_exit_orders(symbol)
    assert len(orders) == 1, orders
    assert orders[0].endswith(f"-{rule.value}")
    records = await pq.exit_records(rig.store.pool, ACCOUNT)
    assert [(r.symbol, r.rule, r.outcome) for r in records] == [(symbol, rule.value, "accepted")]
    stored = await rig.store.pool.fetchval(
        "SELECT count(*) FROM orders WHERE account = $1 AND client_order_id = $2",
        ACCOUNT, orders[0])
    assert stored == 1


@pytest.mark.parametrize("rule", [ExitRule.STOP_LOSS, ExitRule.TAKE_PROFIT])
async def test_price_exit_fires_once(rig: Rig, rule: ExitRule) -> None:
    if rule is ExitRule.STOP_LOSS:
        rig.rules = ExitRules(stop_loss_pct=Decimal(5))
        factor = Decimal("0.9")
    else:
        rig.rules = ExitRules(take_profit_pct=Decimal(5))
        factor = Decimal("1.1")
    pm, entry = await _open_and_track(rig, "AAPL", 10)
    assert rig.sim_exit_orders("AAPL") == []
    rig.sim.market.set_price("AAPL", entry * factor)
    await pm.tick()
    await pm.tick()  # the position is closed by now: nothing more to do
    await _assert_one_exit(rig, "AAPL", rule)
    assert await rig.broker.get_position("AAPL") is None
    await pm.tick()
    assert await pq.load_exit_states(rig.store.pool, ACCOUNT) == {}


async def test_market_closed_syncs_and_lifts_a_drift_block_but_sends_no_exit(
        rig: Rig) -> None:
    # Positions and drift are checked whatever the clock says (a block must be able to
    # lift while closed); exits wait for the open.
    market = {"open": True}

    async def is_open() -> bool:
        return market["open"]

    rig.rules = ExitRules(stop_loss_pct=Decimal(5))
    await rig.buy("AAPL", 5)
    await rig.wait_fills(1)
    pm = rig.manager(market_open=is_open, drift_strikes_max=2)  # no stream role here
    await pm.tick()
    await pm.tick()
    rig.sim.faults.mute(ACCOUNT)
    await rig.buy("AAPL", 3)
    await pm.tick()
    await pm.tick()
    assert (await rig.control(DRIFT_CONTROL))["blocked"] is True

    market["open"] = False
    pos = await rig.broker.get_position("AAPL")
    assert pos is not None
    rig.sim.market.set_price("AAPL", pos.avg_entry_price * Decimal("0.9"))  # stop-loss hit
    assert rig.sim.faults.unmute(ACCOUNT, deliver=True) > 0
    await rig.wait_fills(2)
    await pm.tick()
    assert (await rig.control(DRIFT_CONTROL))["blocked"] is False
    assert pm.counters.syncs == 5 and pm.counters.exits_idle == 1
    assert rig.sim_exit_orders("AAPL") == []  # closed: no exit sent
    market["open"] = True
    await pm.tick()
    await _assert_one_exit(rig, "AAPL", ExitRule.STOP_LOSS)


async def test_trailing_stop_uses_the_persisted_high_water_mark(rig: Rig) -> None:
    rig.rules = ExitRules(trailing_stop_pct=Decimal(3))
    pm, entry = await _open_and_track(rig, "MSFT", 3)
    rig.sim.market.set_price("MSFT", entry * Decimal("1.05"))
    await pm.tick()
    [state] = (await pq.load_exit_states(rig.store.pool, ACCOUNT)).values()
    assert state.state.high_water >= entry * Decimal("1.04")
    assert rig.sim_exit_orders("MSFT") == []
    # A restart in between: the new instance must use the stored mark, not a fresh one.
    restarted = rig.manager()
    rig.sim.market.set_price("MSFT", entry * Decimal("1.005"))  # > entry, < high by ~4 %
    await restarted.tick()
    await _assert_one_exit(rig, "MSFT", ExitRule.TRAILING_STOP)


async def test_max_hold_fires_after_the_holding_time(rig: Rig) -> None:
    rig.rules = ExitRules(max_hold_s=3600)
    pm, _ = await _open_and_track(rig, "SPY", 1)
    await pm.tick()
    assert rig.sim_exit_orders("SPY") == []
    rig.offset = timedelta(seconds=3601)
    await pm.tick()
    await _assert_one_exit(rig, "SPY", ExitRule.MAX_HOLD)


async def test_option_closed_before_expiry(rig: Rig) -> None:
    rig.rules = ExitRules(close_options_days_before_expiry=1, stop_loss_pct=Decimal(50))
    later, soon = soon_option("MSFT", 10, 420), soon_option("MSFT", 1, 420)
    await rig.buy(later, 1)
    await rig.buy(soon, 1)
    pm = rig.manager()
    await pm.tick()
    await pm.tick()
    await _assert_one_exit(rig, soon, ExitRule.OPTION_EXPIRY)
    [exit_order] = [o for o in rig.sim.engine.states[ACCOUNT].orders.values()
                    if o.symbol == soon and o.side == "sell"]
    assert exit_order.position_intent == "sell_to_close"  # every option order says it
    assert rig.sim_exit_orders(later) == []
    held = {p.symbol for p in await rig.broker.list_positions()}
    assert held == {later}


async def test_open_exit_is_never_doubled_across_ticks_and_restarts(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=Decimal(5))
    pm, entry = await _open_and_track(rig, "AAPL", 4)
    stored = await pq.load_exit_states(rig.store.pool, ACCOUNT)
    opened_at = stored["AAPL"].state.opened_at
    rig.sim.faults.set_clock("closed")  # market orders now wait, open, for the next session
    rig.sim.market.set_price("AAPL", entry * Decimal("0.9"))
    await pm.tick()
    cid = exit_client_order_id(ACCOUNT, "AAPL", opened_at, ExitRule.STOP_LOSS)
    assert rig.sim_exit_orders("AAPL") == [cid]
    await pm.tick()  # the exit is open: the same decision is not sent again
    assert pm.counters.exits_waiting == 1
    # A process restart: state comes back from Postgres, the open exit is found.
    restarted = rig.manager()
    await restarted.tick()
    assert restarted.counters.exits_submitted == 0 and restarted.counters.exits_waiting == 1
    # Even a restarted process that missed the open order (crash between submit and
    # record) re-sends under the same id, which the broker refuses as a duplicate.
    tracked = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["AAPL"]
    assert tracked.state.opened_at == opened_at
    from ops.core.exits import ExitDecision
    await restarted._submit_exit(
        ExitDecision(ExitRule.STOP_LOSS, "stop_loss: retry", "AAPL", Side.SELL, Decimal(4)),
        tracked, entry, rig.now())
    assert rig.sim_exit_orders("AAPL") == [cid]
    records = await pq.exit_records(rig.store.pool, ACCOUNT)
    assert [(r.client_order_id, r.attempts) for r in records] == [(cid, 2)]
    # Market opens: the one exit fills, the position and its state are gone.
    rig.sim.faults.set_clock("open")

    async def closed() -> bool:
        return await rig.broker.get_position("AAPL") is None
    await eventually(closed, "the exit order filled")
    await restarted.tick()
    assert await pq.load_exit_states(rig.store.pool, ACCOUNT) == {}
    assert rig.sim_exit_orders("AAPL") == [cid]


async def test_position_reopened_between_syncs_gets_a_fresh_exit_id(rig: Rig) -> None:
    rig.rules = ExitRules(max_hold_s=3600)
    pm, _ = await _open_and_track(rig, "SPY", 1)
    rig.offset = timedelta(seconds=3601)
    await pm.tick()  # max hold: exit sent and filled
    [first] = rig.sim_exit_orders("SPY")
    await rig.buy("SPY", 2)  # a new position, opened before the next sync saw "flat"
    await pm.tick()  # still held "too long" by the old opened_at: the old id comes back
    assert rig.sim_exit_orders("SPY") == [first]  # ... and is refused as a duplicate
    assert pm.counters.exits_stale == 1
    state = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["SPY"].state
    assert state.opened_at > rig.now() - timedelta(seconds=60)  # a new epoch from now
    await pm.tick()
    assert rig.sim_exit_orders("SPY") == [first]  # the new position is young
    rig.offset += timedelta(seconds=3601)
    await pm.tick()
    exits = rig.sim_exit_orders("SPY")
    assert len(exits) == 2 and exits[0] == first and exits[1] != first
    assert await rig.broker.get_position("SPY") is None


async def test_kill_switch_flatten_sends_no_exit_but_halt_does(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=Decimal(5))
    pm, entry = await _open_and_track(rig, "AAPL", 2)
    rig.sim.market.set_price("AAPL", entry * Decimal("0.9"))
    await rig.store.set_control(ACCOUNT, "kill_switch", {"mode": "flatten"}, "test")
    await pm.tick()
    assert rig.sim_exit_orders("AAPL") == []
    await rig.store.set_control(ACCOUNT, "kill_switch", {"mode": KillSwitch.HALT.value},
                                "test")
    await pm.tick()
    await _assert_one_exit(rig, "AAPL", ExitRule.STOP_LOSS)


def test_position_mismatches_treats_missing_as_zero() -> None:
    got = drift.position_mismatches({"A": Decimal(1), "B": Decimal(2)},
                                    {"B": Decimal(2), "C": Decimal(-1)}, ignore=["Z"])
    assert [m.describe() for m in got] == ["A expected 1 actual 0", "C expected 0 actual -1"]
    assert drift.position_mismatches({"A": Decimal(1)}, {"A": Decimal(2)}, ignore=["A"]) == []


# --- Postgres outage ------------------------------------------------------------------------


async def test_exits_keep_working_through_a_postgres_outage(
    sim: Simulator, pg_dedicated: Any, tmp_path: Any
) -> None:
    """Postgres stops: the sync is buffered, the drift check says it is skipped, and a stop
    loss still closes the position at the broker; after Postgres returns the buffered
    order and positions land and the position's exit state is cleaned up."""
    import asyncio

    from ops.runtime.env import RuntimeEnv
    from ops.store.store import StoreSettings

    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path,
                     database_url=pg_dedicated.url())
    store = await Store.open(env, process="pm-test", config=StoreSettings(
        connect_timeout_s=1.0, drain_poll_s=0.1))
    spec = sim.account(ACCOUNT)
    creds = Credentials("test/large", ACCOUNT, spec.key_id, spec.secret)
    broker = Broker(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url), creds, FAST)
    await broker.bind_account(spec.account_number)

    async def on_update(u: TradeUpdate) -> None:
        await store.write_many([trade_update_op(ACCOUNT, u), order_op(ACCOUNT, u.order)])

    async def on_bad(msg: object, why: str) -> None:
        raise AssertionError(why)

    stream = TradeStream(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url), creds,
                         on_update, on_bad)
    await stream.start()
    await sim.wait_stream(ACCOUNT)
    rig = Rig(sim, store, broker, stream, rules=ExitRules(stop_loss_pct=Decimal(5)))
    try:
        pm, entry = await _open_and_track(rig, "AAPL", 3)
        await pm.tick()
        await asyncio.to_thread(pg_dedicated.stop, "fast")
        rig.sim.market.set_price("AAPL", entry * Decimal("0.9"))
        await pm.tick()  # no exception: every Postgres-bound step degrades
        assert pm.counters.drift_skipped >= 1
        assert len(rig.sim_exit_orders("AAPL")) == 1
        assert await broker.get_position("AAPL") is None
        assert await store.buffer.has_pending()

        await asyncio.to_thread(pg_dedicated.start)
        assert await store.wait_drained(30)
        await pm.tick()
        [cid] = rig.sim_exit_orders("AAPL")
        assert await store.pool.fetchval(
            "SELECT count(*) FROM orders WHERE client_order_id = $1", cid) == 1
        assert await pq.load_exit_states(store.pool, ACCOUNT) == {}
        assert [p.position.symbol for p in (await store.positions(ACCOUNT)).rows] == []
        assert len(rig.sim_exit_orders("AAPL")) == 1
    finally:
        await stream.stop()
        broker.close()
        await store.close()


async def test_operator_accepts_the_broker_positions_with_an_audit_row(rig: Rig) -> None:
    """A drift block the operator resolves by accepting the broker's positions: applied at
    the next sync, the block lifts at once, and the audit row says who, when, what the
    database expected and what was accepted."""
    import asyncio

    from ops.commands.control import accept_positions, describe_accept

    await rig.buy("MSFT", 2)
    await rig.wait_fills(1)
    pm = rig.manager()
    await pm.tick()
    await pm.tick()
    await rig.stream.stop()  # nothing is recorded from here on
    await rig.buy("SPY", 1)
    await pm.tick()
    await complete_fill_check(rig)
    await pm.tick()
    assert (await rig.control(DRIFT_CONTROL))["blocked"] is True

    waiting = asyncio.create_task(accept_positions(rig.store, ACCOUNT, "cli:tester", 20))

    async def requested() -> bool:
        return bool(await pq.pending_accepts(rig.store.pool, ACCOUNT))
    await eventually(requested, "the accept request recorded")
    await pm.tick()
    _, record = await waiting
    assert record is not None and record.applied_at is not None
    assert record.requested_by == "cli:tester"
    assert record.applied_by == f"{ACCOUNT}-position-manager"
    assert record.before == {"MSFT": Decimal(2)}
    assert record.after == {"MSFT": Decimal(2), "SPY": Decimal(1)}
    assert "SPY expected 0 actual 1" in str(record.detail)
    assert any("SPY" in line and "<- changed" in line for line in describe_accept(record))
    value = await rig.control(DRIFT_CONTROL)
    assert value["blocked"] is False and "accepted by cli:tester" in value["reason"]
    assert await rig.open_drift_incidents() == []
    await pm.tick()  # the accepted positions are the baseline now: no new alarm
    assert pm.counters.drift_mismatches == 0
    assert await pq.pending_accepts(rig.store.pool, ACCOUNT) == []


# --- refused exits (issue 13.3) ---------------------------------------------------------------


async def refusal_incidents(rig: Rig, symbol: str) -> list[dict[str, Any]]:
    """Every incident (open or closed) of the exit refusal of `symbol`."""
    rows = await rig.store.pool.fetch(
        "SELECT kind, account, process, detail, closed_at, close_reason, closed_by, "
        "seen_by FROM incidents "
        "WHERE dedupe_key = $1 ORDER BY opened_at",
        refusals.dedupe_key(refusals.EXIT_REFUSED, ACCOUNT, symbol))
    return [dict(r) for r in rows]


async def test_refused_exit_is_one_incident_until_the_position_is_gone(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=Decimal(5))
    pm, entry = await _open_and_track(rig, "AAPL", 10)
    # The 1k account's pattern-day-trading protection, on the next two AAPL sells only.
    rig.sim.faults.refuse_next_orders(n=2, account=ACCOUNT, symbol="AAPL", side="sell")
    rig.sim.market.set_price("AAPL", entry * Decimal("0.9"))
    await pm.tick()  # the stop loss fires and is refused: an incident within this tick
    [inc] = await refusal_incidents(rig, "AAPL")
    assert inc["kind"] == "exit-refused" and inc["account"] == ACCOUNT
    assert inc["process"] == f"{ACCOUNT}-position-manager" and inc["closed_at"] is None
    detail = inc["detail"]
    stored = await pq.load_exit_states(rig.store.pool, ACCOUNT)
    cid = exit_client_order_id(ACCOUNT, "AAPL", stored["AAPL"].state.opened_at,
                               ExitRule.STOP_LOSS)
    for needle in ("the broker refused the stop_loss exit of 10 AAPL (sell) on large",
                   f"(order {cid})", "pattern-day-trading protection (403 40310100)",
                   "4th day trade in 5 days; close it by hand or wait"):
        assert needle in detail, (needle, detail)
    assert pm.counters.exits_rejected == 1 and pm.counters.exits_refused_open == 1
    assert rig.sim_exit_orders("AAPL") == []
    # Pattern-day-trading: the exit is sent again at the next session open, not every tick.
    next_open = rig.sim.clock.next_open()
    assert f"sent again at the next session open, {next_open.astimezone(UTC):%Y-%m-%d %H:%M}" \
        in detail, detail

    await pm.tick()  # not sent again before that open: still that one incident
    incs = await refusal_incidents(rig, "AAPL")
    assert len(incs) == 1 and incs[0]["closed_at"] is None
    assert pm.counters.exits_rejected == 1 and pm.counters.exits_deferred == 1
    # A restarted position manager (which forgot the retry time) tries once, is refused
    # again, and knows of the open incident: no second one.
    pm = rig.manager()
    await pm.tick()
    assert len(await refusal_incidents(rig, "AAPL")) == 1
    assert pm.counters.exits_rejected == 1 and pm.refusals.repeats == 1
    # At the next open the exit goes out (refused once more here: still one incident).
    rig.sim.faults.refuse_next_orders(n=1, account=ACCOUNT, symbol="AAPL", side="sell")
    rig.offset = next_open - datetime.now(UTC) + timedelta(seconds=1)
    await pm.tick()
    assert pm.counters.exits_rejected == 2 and pm.counters.exits_deferred == 0
    assert len(await refusal_incidents(rig, "AAPL")) == 1

    # The operator closes the position by hand: the next sync closes the incident.
    await rig.broker.close_position("AAPL")

    async def gone() -> bool:
        return await rig.broker.get_position("AAPL") is None
    await eventually(gone, "AAPL closed by hand")
    await pm.tick()
    [inc] = await refusal_incidents(rig, "AAPL")
    assert inc["closed_at"] is not None
    assert "position in AAPL is gone" in inc["close_reason"]
    assert inc["closed_by"] == f"{ACCOUNT}-position-manager"
    assert pm.counters.exits_refused_open == 0
    assert [i.kind for i in (await rig.store.open_incidents()).rows] == []


async def test_refused_exit_closes_when_a_later_exit_is_accepted(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=Decimal(5))
    pm, entry = await _open_and_track(rig, "MSFT", 3)
    rig.sim.faults.refuse_next_orders(
        n=1, account=ACCOUNT, symbol="MSFT", status=403, code=40310000,
        message="insufficient qty available for order (requested: 3, available: 1)")
    rig.sim.market.set_price("MSFT", entry * Decimal("0.9"))
    await pm.tick()
    [inc] = await refusal_incidents(rig, "MSFT")
    assert "held by open orders (3 requested, 1 available)" in inc["detail"]
    await pm.tick()  # the refusal is over: this exit is accepted
    [inc] = await refusal_incidents(rig, "MSFT")
    assert inc["closed_at"] is not None and "accepted by the broker" in inc["close_reason"]
    assert len(rig.sim_exit_orders("MSFT")) == 1


async def test_a_rejected_key_names_the_secret_to_rotate(rig: Rig) -> None:
    rig.rules = ExitRules(take_profit_pct=Decimal(5))
    pm = rig.manager(secret_id="ops-pipeline/alpaca")
    await rig.buy("SPY", 2)
    await pm.tick()
    pos = await rig.broker.get_position("SPY")
    assert pos is not None
    rig.sim.faults.refuse_next_orders(n=1, status=401, code=40110000,
                                      message="request is not authorized", symbol="SPY")
    rig.sim.market.set_price("SPY", pos.avg_entry_price * Decimal("1.2"))
    await pm.tick()
    [inc] = await refusal_incidents(rig, "SPY")
    assert "rejected the account's API key (401 40110000)" in inc["detail"]
    assert "rotate secret ops-pipeline/alpaca " in inc["detail"]
    assert "reachable" not in inc["detail"]
    spec = rig.sim.account(ACCOUNT)
    assert spec.key_id not in inc["detail"] and spec.secret not in inc["detail"]


# --- ownership ------------------------------------------------------------------------------


async def test_an_external_position_is_never_sold_until_adopted(rig: Rig) -> None:
    """Bought by hand (not a pipeline order): a 20 % drop under a 5 % stop-loss sends no
    exit; a pipeline lot beside it is exited alone; adopted, the rest is exited too."""
    from ops.commands.positions import change_owner

    rig.rules = ExitRules(stop_loss_pct=Decimal(5))
    await rig.buy("QCOM", 30, by_hand=True)
    await rig.wait_fills(1)
    pm = rig.manager()
    await pm.tick()
    await pm.tick()
    pos = await rig.broker.get_position("QCOM")
    assert pos is not None
    rig.sim.market.set_price("QCOM", pos.avg_entry_price * Decimal("0.8"))
    await pm.tick()
    await pm.tick()
    assert rig.sim_exit_orders("QCOM") == []  # external: never sold
    assert pm.counters.positions_external == 1
    held = await rig.broker.get_position("QCOM")
    assert held is not None and held.qty == 30

    # A pipeline lot of the same symbol: only it is exited.
    await rig.buy("QCOM", 4)
    await rig.wait_fills(2)
    await pm.tick()
    orders = [o for o in rig.sim.engine.states[ACCOUNT].orders.values()
              if o.client_order_id.startswith(exit_prefix(ACCOUNT))]
    assert [(o.symbol, o.qty) for o in orders] == [("QCOM", Decimal(4))]

    # Adopted: the rest is the pipeline's now, and its stop-loss acts at the next tick.
    change = await change_owner(rig.store, ACCOUNT, "QCOM", adopt=True, qty=None,
                                by="cli:tester")
    assert change.before.external > 0 and change.after.external == 0
    await pm.tick()
    await pm.tick()
    gone = await rig.broker.get_position("QCOM")
    assert gone is None or gone.qty == 0
