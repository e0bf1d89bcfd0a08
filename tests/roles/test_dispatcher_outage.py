"""Issue 13.5: a Postgres outage says what it holds back, and what it held back is sent
only after it is gated again against the broker's current state.

A dispatcher (large) and a signal engine, each with its own Store on one host buffer (as
under supervisord), a real simulator and a Postgres of the test's own that is stopped
and started again. While it is down the engine's signals land in the outage buffer and
the dispatcher's heartbeat counters say "paused: database unreachable, N waiting"; once it
is back, two "buy 3 SPY" under a symbol limit that fits one send exactly one, and a
signal whose expiry passed during the outage is expired with a reason, never sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ops.broker import Broker
from ops.core.models import KillSwitch, Side
from ops.core.risk import RiskLimits, signal_client_order_id
from ops.roles.dispatcher import PAUSE_DB, Dispatcher
from ops.roles.signal_engine import AccountFeed, LoadedStrategy, SignalEngine
from ops.runtime.env import RuntimeEnv
from ops.sim import Simulator
from ops.store import signals as sq
from ops.store.embedded import EmbeddedPostgres
from ops.store.store import Store, StoreSettings
from ops.strategies import ProposedSignal, StrategyContext
from tests.roles.test_dispatcher import make_broker
from tests.support import eventually

ACCOUNT = "large"  # 3 SPY is more than the 1k account can buy
SLOT = datetime(2026, 1, 5, 15, 0, 5, tzinfo=UTC)


def proposals(ctx: StrategyContext) -> list[ProposedSignal]:
    """Two identical entries (only one fits the symbol limit) and one short-lived one."""
    return [ProposedSignal("SPY", Side.BUY, qty=Decimal(3)),
            ProposedSignal("SPY", Side.BUY, qty=Decimal(3)),
            ProposedSignal("MSFT", Side.BUY, qty=Decimal(1), ttl_s=1.0)]


def limits_for(spy: Decimal) -> RiskLimits:
    # One "buy 3 SPY" fits, two do not (with a 25% margin for the market's moves).
    return RiskLimits(max_order_notional=spy * 4, max_symbol_notional=spy * Decimal("4.5"),
                      max_open_positions=5, daily_loss_limit=Decimal(500),
                      max_qty=Decimal(10), signal_ttl_s=300.0)


@pytest.fixture
async def stores(pg_dedicated: EmbeddedPostgres,
                 tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """(dispatcher's, engine's) stores: one host buffer file, as under supervisord."""
    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path,
                     database_url=pg_dedicated.url())
    settings = StoreSettings(connect_timeout_s=1.0, drain_poll_s=0.1,
                             buffer_path=tmp_path / "buffer.sqlite3")
    d_store = await Store.open(env, process="large-dispatcher", config=settings)
    e_store = await Store.open(env, process="signal-engine", config=settings)
    try:
        yield d_store, e_store
    finally:
        await e_store.close()
        await d_store.close()


async def _decided(store: Store) -> list[Any]:
    rows = await store.pool.fetch(
        "SELECT id, symbol, status, reason, expires_at FROM signals WHERE account = $1 "
        "ORDER BY id", ACCOUNT)
    return list(rows)


@pytest.mark.parametrize("batch", [1, 50], ids=["a-pass-per-signal", "one-pass"])
async def test_outage_pauses_dispatch_visibly_then_revalidates_every_signal(
    sim: Simulator, pg_dedicated: EmbeddedPostgres, stores: tuple[Store, Store],
    batch: int,
) -> None:
    d_store, e_store = stores
    broker: Broker = make_broker(sim, ACCOUNT)
    await broker.bind_account(sim.account(ACCOUNT).account_number)
    spy = sim.market.price("SPY")
    limits = limits_for(spy)

    async def ks() -> KillSwitch:
        return KillSwitch.OFF

    d = Dispatcher(store=d_store, broker=broker, account=ACCOUNT, limits=lambda: limits,
                   kill_switch=ks, process="large-dispatcher", batch=batch)
    engine_broker = make_broker(sim, ACCOUNT)
    engine = SignalEngine(
        store=e_store, process="signal-engine",
        strategies=[LoadedStrategy("twice", proposals, (ACCOUNT,), {})],
        feeds={ACCOUNT: AccountFeed(ACCOUNT, engine_broker,
                                    sim.account(ACCOUNT).account_number)},
        limits=lambda a: limits if a == ACCOUNT else None)
    try:
        await d.run_pass()
        assert d.reconciled and d.counters()["dispatch_paused"] == 0

        await asyncio.to_thread(pg_dedicated.stop, mode="fast")
        report = await engine.run_slot(SLOT)
        assert len(report.inserted) == 3 and report.failed == []
        ec = engine.counters.as_dict()
        assert ec["signals_buffered"] == 3 and ec[f"signals_buffered.{ACCOUNT}"] == 3

        async def paused_db() -> bool:
            await d.run_pass()
            return d.counters()["dispatch_paused_reason"] == PAUSE_DB
        await eventually(paused_db, "the dispatcher sees the database unreachable")
        report_ = await d.run_pass()
        assert report_.skipped == PAUSE_DB and report_.outcomes == []
        c = d.counters()
        assert c["dispatch_paused"] == 1 and c["signals_waiting"] == 3
        since = float(c["dispatch_paused_since"])
        assert 0 < datetime.now(UTC).timestamp() - since < 60
        assert float(c["dispatch_paused_for_s"]) >= 0
        assert not any(o.client_order_id.startswith(f"ops-{ACCOUNT}-sig-")
                       for o in sim.engine.states[ACCOUNT].orders.values())

        # The short-lived signal's expiry passes while Postgres is still away.
        counts = await sq.buffered_signal_counts(d_store.buffer.path)
        assert counts == {ACCOUNT: 3}
        # (It was created before the pause began, with a 1 s time to live.)
        await eventually(lambda: datetime.now(UTC).timestamp() > since + 1.5,
                         "the short signal's ttl over", timeout_s=10)

        await asyncio.to_thread(pg_dedicated.start)
        assert await e_store.wait_drained(30)

        async def all_decided() -> bool:
            await d.run_pass()
            return all(r["status"] in ("submitted", "rejected", "expired")
                       for r in await _decided(d_store))
        await eventually(all_decided, "every waiting signal decided", timeout_s=30)

        rows = await _decided(d_store)
        assert [r["symbol"] for r in rows] == ["SPY", "SPY", "MSFT"]
        spy_rows = [r for r in rows if r["symbol"] == "SPY"]
        assert sorted(r["status"] for r in spy_rows) == ["rejected", "submitted"], spy_rows
        refused = next(r for r in spy_rows if r["status"] == "rejected")
        assert refused["reason"].startswith("max_symbol_notional:"), refused["reason"]
        msft = rows[2]
        assert msft["status"] == "expired", msft
        assert "expired at" in msft["reason"]
        assert f"waited while dispatch was paused ({PAUSE_DB}" in msft["reason"]
        # At the broker: one 3-share SPY order from these signals, no MSFT order.
        orders = [o for o in sim.engine.states[ACCOUNT].orders.values()
                  if o.client_order_id in {signal_client_order_id(ACCOUNT, r["id"])
                                           for r in rows}]
        assert [(o.symbol, o.qty) for o in orders] == [("SPY", Decimal(3))]

        c = d.counters()
        assert c["dispatch_paused"] == 0 and c["signals_waiting"] == 0
        assert c["dispatch_paused_reason"] == "" and float(c["last_pause_s"]) > 0
        await engine.run_slot(SLOT.replace(minute=1))
        assert engine.counters.as_dict()["signals_buffered"] == 0
    finally:
        engine.close()
        broker.close()
