"""trade_updates frames as the broker sends them, for the tests that burst many at once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

BURST_START = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def burst_fill(i: int, *, status: str = "partially_filled") -> bytes:
    """Fill i (1 share at T+i ms, execution id `burst-<i>`) of the broker-unknown order
    'burst-order'."""
    ts = (BURST_START + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z")
    return json.dumps({"stream": "trade_updates", "data": {
        "event": "partial_fill", "execution_id": f"burst-{i}", "timestamp": ts,
        "price": "1.5", "qty": "1", "position_qty": str(i + 1), "order": {
            "id": "burst-order", "client_order_id": "burst", "created_at": ts,
            "updated_at": ts, "symbol": "AAPL", "side": "buy", "type": "market",
            "time_in_force": "day", "qty": "100000", "filled_qty": str(i + 1),
            "status": status}}}).encode()
