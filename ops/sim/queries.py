"""Read-only account queries: the order list and the FILL activities feed.

Filtering and paging rules follow alpaca-wire.md sections 3.5 and 3.6; the engine owns
the state, these functions only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ops.sim.accounts import AccountState, OrderState
from ops.sim.wire import parse_time, unprocessable


def list_orders(st: AccountState, q: Mapping[str, str]) -> list[OrderState]:
    """GET /v2/orders filtering: status, after/until (submission, exclusive), side, symbols."""
    status = q.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise unprocessable(f"invalid status: {status!r}")
    direction = q.get("direction", "desc")
    if direction not in ("asc", "desc"):
        raise unprocessable(f"invalid direction: {direction!r}")
    try:
        limit = min(int(q.get("limit", "50")), 500)
        after = parse_time(q["after"], "after") if q.get("after") else None
        until = parse_time(q["until"], "until") if q.get("until") else None
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    symbols = {s.strip().upper() for s in q.get("symbols", "").split(",") if s.strip()}
    side = q.get("side")
    out = []
    for o in st.orders.values():
        if (status == "open" and not o.is_open) or (status == "closed" and o.is_open):
            continue
        if (after and o.submitted_at <= after) or (until and o.submitted_at >= until):
            continue
        if (symbols and o.symbol not in symbols) or (side and o.side != side):
            continue
        out.append(o)
    out.sort(key=lambda o: o.seq, reverse=direction == "desc")
    return out[: max(limit, 0)]

def activities(st: AccountState, q: Mapping[str, str]) -> list[dict[str, Any]]:
    """FILL activities with order_id, after/until/date, direction and page_size/page_token
    paging. `order_id` keeps only that order's activities (Alpaca changelog 2026-07-29);
    an id that names no order of the account gives an empty list."""
    types = q.get("activity_types", "FILL").upper().split(",")
    if "FILL" not in types:
        return []
    direction = q.get("direction", "desc")
    if direction not in ("asc", "desc"):
        raise unprocessable(f"invalid direction: {direction!r}")
    try:
        page_size = min(int(q.get("page_size", "100")), 100)
        after = parse_time(q["after"], "after") if q.get("after") else None
        until = parse_time(q["until"], "until") if q.get("until") else None
        day = parse_time(q["date"], "date").date() if q.get("date") else None
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    token = q.get("page_token")
    order_id = q.get("order_id")
    items = sorted(st.activities, key=lambda a: str(a["id"]), reverse=direction == "desc")
    out = []
    for a in items:
        if order_id and a["order_id"] != order_id:
            continue
        ts = parse_time(str(a["transaction_time"]), "transaction_time")
        if (after and ts <= after) or (until and ts >= until) or (day and ts.date() != day):
            continue
        if token and (a["id"] <= token if direction == "asc" else a["id"] >= token):
            continue
        out.append(dict(a))
    return out[: max(page_size, 0)]
