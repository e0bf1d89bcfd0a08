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

from ops.core.models import TradeUpdate, fill_key
from ops.store.ops import Op, dumps, enc


def _ts(v: datetime) -> str:
    if v.tzinfo is None:
        raise ValueError(f"naive datetime {v.isoformat()} cannot be stored: add a tz")
    return v.isoformat()


def trade_update_row_op(account: str, u: TradeUpdate) -> Op:
    """The `trade_update` op for `u`: its event row plus `u.order` as the order's state.

    Built for every update on arrival, so written for speed (a burst builds tens of
    thousands a second): helpers inlined, and a timestamp equal to one already formatted
    (an event's time and its order's `updated_at`, `created_at` and `submitted_at` of a
    new order, ...) reuses that text: the same instant, so the same stored value."""
    o = u.order
    cum = u.fill_cum  # once: the key and the column both need it
    if u.raw_json is not None:
        raw, order_raw = u.raw_json, None  # the order is data.order inside raw_json
    else:
        raw, order_raw = dumps(enc(dict(u.raw))), dumps(enc(dict(o.raw)))
    upd, created, ts = o.updated_at, o.created_at, u.timestamp
    upd_s = _ts(upd)
    created_s = upd_s if created == upd else _ts(created)
    ts_s = upd_s if ts == upd else _ts(ts)
    sub, filled, canceled = o.submitted_at, o.filled_at, o.canceled_at
    price, qty, pos, notional = u.price, u.qty, u.position_qty, o.notional
    avg, limit, stop, order_qty = o.filled_avg_price, o.limit_price, o.stop_price, o.qty
    return Op("trade_update", {
        "account": account,
        "event_key": u.event_key if cum is None else fill_key(o.id, cum),
        "order_id": o.id, "client_order_id": o.client_order_id, "symbol": o.symbol,
        "event": u.event, "ts": ts_s, "execution_id": u.execution_id,
        "price": None if price is None else str(price),
        "qty": None if qty is None else str(qty),
        "position_qty": None if pos is None else str(pos),
        "cum_qty": None if cum is None else str(cum), "raw": raw,
        "order_raw": order_raw, "side": o.side, "order_type": o.order_type,
        "time_in_force": o.time_in_force,
        "order_qty": None if order_qty is None else str(order_qty),
        "notional": None if notional is None else str(notional),
        "filled_qty": None if (fq := o.filled_qty) is None else str(fq),
        "filled_avg_price": None if avg is None else str(avg),
        "limit_price": None if limit is None else str(limit),
        "stop_price": None if stop is None else str(stop),
        "status": o.status, "asset_class": o.asset_class,
        "created_at": created_s, "updated_at": upd_s,
        "submitted_at": (None if sub is None else created_s if sub == created
                         else _ts(sub)),
        "filled_at": None if filled is None else upd_s if filled == upd else _ts(filled),
        "canceled_at": (None if canceled is None else upd_s if canceled == upd
                        else _ts(canceled)),
    })


__all__ = ["trade_update_row_op"]
