"""The stream's write: a trade update and its order's state as ONE `trade_update` op.

`write_many([trade_update_row_op(account, u) for u in batch])` stores a whole batch of
updates in one transaction and one statement (ops/store/ops.py `_TU_SQL`):
each event exactly once (a fill by its identity, account + order + cumulative quantity;
any other event by (account, event_key)), in batch order, and the newest state of
each order, forward-only by `updated_at`. It replaces `record_trade_updates` followed by
`upsert_orders` (two transactions, two looks at the buffer, the raw JSON encoded twice).

The payload is all text: numbers and timestamps in their exact string forms, and the
update's JSON text as received (`TradeUpdate.raw_json`) when there is one, so nothing is
re-encoded on the hot path. One op per update keeps the buffer's unit of replay (and of
quarantine, for a row Postgres refuses) a single event.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ops.models import TradeUpdate, fill_key
from ops.store.ops import Op, dumps, enc


def _num(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


def _ts(v: datetime | None) -> str | None:
    if v is None:
        return None
    if v.tzinfo is None:
        raise ValueError(f"naive datetime {v.isoformat()} cannot be stored: add a tz")
    return v.isoformat()


def trade_update_row_op(account: str, u: TradeUpdate) -> Op:
    """The `trade_update` op for `u`: its event row plus `u.order` as the order's state."""
    o = u.order
    cum = u.fill_cum  # once: the key and the column both need it
    key = fill_key(o.id, cum) if cum is not None else u.event_key
    if u.raw_json is not None:
        raw, order_raw = u.raw_json, None  # the order is data.order inside raw_json
    else:
        raw, order_raw = dumps(enc(dict(u.raw))), dumps(enc(dict(o.raw)))
    return Op("trade_update", {
        "account": account, "event_key": key, "order_id": o.id,
        "client_order_id": o.client_order_id, "symbol": o.symbol, "event": u.event,
        "ts": _ts(u.timestamp), "execution_id": u.execution_id, "price": _num(u.price),
        "qty": _num(u.qty), "position_qty": _num(u.position_qty),
        "cum_qty": None if cum is None else str(cum), "raw": raw,
        "order_raw": order_raw, "side": o.side, "order_type": o.order_type,
        "time_in_force": o.time_in_force, "order_qty": _num(o.qty),
        "notional": _num(o.notional), "filled_qty": _num(o.filled_qty),
        "filled_avg_price": _num(o.filled_avg_price), "limit_price": _num(o.limit_price),
        "stop_price": _num(o.stop_price), "status": o.status, "asset_class": o.asset_class,
        "created_at": _ts(o.created_at), "updated_at": _ts(o.updated_at),
        "submitted_at": _ts(o.submitted_at), "filled_at": _ts(o.filled_at),
        "canceled_at": _ts(o.canceled_at),
    })


__all__ = ["trade_update_row_op"]
