"""Fixture data for the dashboard tests, written through the real Store into Postgres.

Everything is relative to a frozen instant `T` the test chooses, so ages, gaps and P&L
are exact. `write_fixture(store, T)` writes two accounts (large, tiny) with positions
(stocks and one option; owners: AAPL managed, bought by the pipeline; MSFT mixed, 3 of
its 5 adopted; the option and tiny's SPY external), heartbeats and runs for every role
process, an open and a closed incident, orders and fills, a kill switch on tiny and the
reconciliation rows.
`write_drift_block(store)` adds the position manager's drift block on large.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from ops.core.models import AccountInfo, Heartbeat, Order, Position, RunRecord, TradeUpdate
from ops.store import Store
from ops.store.ownership import Adjustment, pipeline_prefix, record_adjustment
from ops.supervise.supervisor import ACCOUNT_ROLES, program_name

ACCOUNTS = ("large", "tiny")
NUMBERS = {"large": "PASIM0000001", "tiny": "PASIM0000002"}
OPTION = "AAPL260619C00190000"


def account_info(name: str, equity: str, last_equity: str) -> AccountInfo:
    return AccountInfo(account_id=f"id-{name}", account_number=NUMBERS[name], status="ACTIVE",
                       currency="USD", cash=Decimal(equity) / 2, equity=Decimal(equity),
                       last_equity=Decimal(last_equity),
                       buying_power=Decimal(equity) * 2)


def position(symbol: str, qty: str, avg: str, last: str, asset_class: str = "us_equity",
             multiplier: int = 1) -> Position:
    q, a, p = Decimal(qty), Decimal(avg), Decimal(last)
    cost = q * a * multiplier
    value = q * p * multiplier
    return Position(symbol=symbol, qty=q, avg_entry_price=a, cost_basis=cost,
                    asset_class=asset_class, market_value=value, current_price=p,
                    unrealized_pl=value - cost, unrealized_plpc=(value - cost) / cost)


def order(oid: str, symbol: str, side: str, qty: str, status: str, at: datetime,
          price: str | None = None, client_order_id: str | None = None) -> Order:
    return Order(id=oid, client_order_id=client_order_id or f"c-{oid}", symbol=symbol,
                 side=side, order_type="market", time_in_force="day", status=status,
                 created_at=at, updated_at=at, submitted_at=at, qty=Decimal(qty),
                 filled_qty=Decimal(qty) if status == "filled" else Decimal(0),
                 filled_avg_price=Decimal(price) if price else None)


async def beat(store: Store, name: str, account: str | None, role: str, at: datetime) -> None:
    await store.heartbeat(Heartbeat(process=name, account=account, role=role, pid=4242,
                                    ts=at, started_at=at - timedelta(hours=1)))


async def ran(store: Store, name: str, account: str | None, role: str, at: datetime,
              outcome: str = "ok") -> None:
    await store.record_run(RunRecord(
        slot_id=RunRecord.make_slot_id(account, role, at), process=name, account=account,
        role=role, slot_time=at, scheduled_at=at, started_at=at, finished_at=at,
        outcome=outcome, lateness_s=0.0))


async def write_fixture(store: Store, t: datetime) -> None:
    await store.record_account("large", account_info("large", "100250.50", "100000.00"), t)
    await store.record_account("tiny", account_info("tiny", "990.00", "1000.00"), t)
    opened = t - timedelta(minutes=42)
    large = [
        position("AAPL", "10", "180", "189"),  # +90.00, +5.00 %
        position("MSFT", "5", "400", "390"),  # -50.00, -2.50 %
        position(OPTION, "2", "3.50", "4.20", "us_option", 100),  # +140.00, +20.00 %
    ]
    tiny = [position("SPY", "1", "500", "495")]
    # First seen 42 minutes ago, last synced a second ago (the position manager syncs
    # every few seconds: the snapshot postdates the fills below).
    for at in (opened, t - timedelta(seconds=1)):
        await store.sync_positions("large", large, at)
        await store.sync_positions("tiny", tiny, at)
    for name, acct in (("large", "large"), ("tiny", "tiny")):
        await store.set_control(acct, "reconciliation",
                                {"state": "reconciled", "at": t.isoformat()}, by=f"{name}-d")
    await store.set_control("tiny", "kill_switch", {"mode": "halt"}, by="test")
    # Every role reports: fresh heartbeats, runs one second ago.
    await beat(store, "signal-engine", None, "signal-engine", t - timedelta(seconds=1))
    await ran(store, "signal-engine", None, "signal-engine", t - timedelta(seconds=1))
    for acct in ACCOUNTS:
        for role in ACCOUNT_ROLES:
            name = program_name(role, acct)
            await beat(store, name, acct, role, t - timedelta(seconds=1))
            await ran(store, name, acct, role, t - timedelta(seconds=1))
    # Orders and fills. AAPL's buy is the pipeline's own order: AAPL is managed.
    buy = order("o-1", "AAPL", "buy", "10", "filled", t - timedelta(seconds=30), "180",
                client_order_id=pipeline_prefix("large") + "sig-1")
    await store.upsert_orders("large", [buy])
    await store.record_trade_updates("large", [TradeUpdate(
        event="fill", order=buy, timestamp=t - timedelta(seconds=30), execution_id="x-1",
        price=Decimal("180"), qty=Decimal("10"), position_qty=Decimal("10"))])
    await store.upsert_orders("tiny", [
        order("o-2", "SPY", "buy", "1", "rejected", t - timedelta(seconds=20))])
    # MSFT, opened by hand, 3 of its 5 adopted: mixed.
    await record_adjustment(store.pool, Adjustment(
        "large", "MSFT", Decimal(3), "adopt", "adopt:fixture-msft", "adopted 3",
        "cli:fixture", t - timedelta(minutes=10)))
    # Incidents: one still open, one closed after 5 minutes.
    await store.open_incident("position-drift", detail="MSFT broker 5 vs db 4",
                              account="large", dedupe_key="drift:large",
                              at=t - timedelta(minutes=3))
    await store.open_incident("stalled", detail="no heartbeat for 12s",
                              process="tiny-stream", dedupe_key="stalled:tiny-stream",
                              at=t - timedelta(hours=2))
    await store.close_incident(dedupe_key="stalled:tiny-stream",
                               at=t - timedelta(hours=2) + timedelta(minutes=5))


#: The position manager's 'drift_block' control for large (ops.roles.position_manager).
DRIFT_BLOCK = {"blocked": True, "since": "2026-03-02T15:28:00+00:00",
               "reason": "account large: broker positions differ from the database",
               "symbols": {"AAPL": {"expected": "5", "actual": "8"},
                           "MSFT": {"expected": "4", "actual": "5"}}}


async def write_drift_block(store: Store) -> None:
    await store.set_control("large", "drift_block", DRIFT_BLOCK, by="large-position-manager")
