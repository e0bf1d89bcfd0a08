"""Synthetic trade updates shaped like the simulator's (and Alpaca's) fill events, for the
benchmarks that need many of them without a broker (the outage benchmark)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ops.core.models import Order, TradeUpdate


def fills(n: int, *, account: str = "large") -> list[TradeUpdate]:
    """`n` distinct fill events (unique execution ids), about 1 kB of raw JSON each."""
    t0 = datetime.now(UTC)
    out: list[TradeUpdate] = []
    for i in range(n):
        ts = t0 + timedelta(microseconds=i)
        oid = str(uuid.uuid4())
        order = Order(
            id=oid, client_order_id=f"bench-{account}-{i}", symbol="AAPL", side="buy",
            order_type="market", time_in_force="day", status="filled", created_at=ts,
            updated_at=ts, submitted_at=ts, qty=Decimal(1), filled_qty=Decimal(1),
            filled_avg_price=Decimal("187.25"), filled_at=ts,
        )
        exec_id = str(uuid.uuid4())
        raw = {"event": "fill", "timestamp": ts.isoformat(), "execution_id": exec_id,
               "price": "187.25", "qty": "1", "position_qty": str(i + 1),
               "order": {"id": oid, "client_order_id": order.client_order_id,
                         "symbol": "AAPL", "side": "buy", "type": "market",
                         "time_in_force": "day", "status": "filled", "qty": "1",
                         "filled_qty": "1", "filled_avg_price": "187.25",
                         "created_at": ts.isoformat(), "updated_at": ts.isoformat(),
                         "submitted_at": ts.isoformat(), "filled_at": ts.isoformat(),
                         "asset_class": "us_equity", "order_class": "", "extended_hours": False,
                         "legs": None, "trail_percent": None, "trail_price": None, "hwm": None}}
        out.append(TradeUpdate("fill", order, ts, exec_id, Decimal("187.25"), Decimal(1),
                               Decimal(i + 1), raw))
    return out
