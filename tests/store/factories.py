"""Small builders of domain objects for store tests (shared by the writer subprocess)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ops.core.models import AccountInfo, Heartbeat, Order, Position, RunRecord, TradeUpdate

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def order(order_id: str, *, status: str = "new", updated: datetime = T0,
          client_order_id: str | None = None, filled_qty: str = "0") -> Order:
    return Order(
        id=order_id, client_order_id=client_order_id or f"c-{order_id}", symbol="AAPL",
        side="buy", order_type="market", time_in_force="day", status=status,
        created_at=T0, updated_at=updated, submitted_at=T0, qty=Decimal("10"),
        filled_qty=Decimal(filled_qty), raw={"id": order_id, "status": status},
    )


def trade_update(order_id: str, seq: int, *, event: str = "fill",
                 execution_id: str | None = None) -> TradeUpdate:
    """An event whose per-entity sequence number is `seq` (kept in raw and in qty); a fill's
    order has filled seq + 1 (its identity: order id, cumulative quantity)."""
    ts = T0 + timedelta(milliseconds=seq)
    filled = str(seq + 1) if event in ("fill", "partial_fill") else "0"
    return TradeUpdate(
        event=event, order=order(order_id, status="partially_filled", updated=ts,
                                 filled_qty=filled),
        timestamp=ts, execution_id=execution_id, price=Decimal("187.25"),
        qty=Decimal(seq), position_qty=Decimal(seq), raw={"seq": seq, "event": event},
    )


def heartbeat(process: str, ts: datetime, n: int = 0) -> Heartbeat:
    return Heartbeat(process=process, account="large", role="stream", pid=os.getpid(),
                     ts=ts, started_at=T0, counters={"events": n})


def run_record(process: str, slot: datetime, outcome: str = "ok",
               finished: datetime | None = None) -> RunRecord:
    return RunRecord(
        slot_id=RunRecord.make_slot_id("large", process, slot), process=process,
        account="large", role="position-manager", slot_time=slot, scheduled_at=slot,
        started_at=slot, finished_at=None if outcome == "running" else (finished or slot),
        outcome=outcome, lateness_s=0.01,
    )


def position(symbol: str, qty: str) -> Position:
    return Position(symbol=symbol, qty=Decimal(qty), avg_entry_price=Decimal("100.5"),
                    cost_basis=Decimal(qty) * Decimal("100.5"), market_value=Decimal("1"),
                    current_price=Decimal("101.123456789"))


def account_info(equity: str) -> AccountInfo:
    return AccountInfo(account_id="acc-1", account_number="PA123", status="ACTIVE",
                       currency="USD", cash=Decimal("1000"), equity=Decimal(equity),
                       last_equity=Decimal("99000"), buying_power=Decimal("2000"))
