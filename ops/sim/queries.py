"""Read-only account queries: the order list and the activities feed (FILLs and the
non-trade activities of ops.sim.corporate).

Filtering and paging rules follow docs/broker-protocol.md sections 3.5 and 3.6; the engine owns
the state, these functions only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

from ops.sim.accounts import AccountState, OrderState
from ops.sim.clock import EASTERN
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

def _activity_day(a: Mapping[str, Any]) -> date:
    """The day an activity is filed under: a FILL's transaction time's date (UTC, as
    before), a non-trade activity's `date` (Alpaca gives those no time)."""
    if a.get("transaction_time"):
        return parse_time(str(a["transaction_time"]), "transaction_time").date()
    return date.fromisoformat(str(a["date"]))


def _activity_time(a: Mapping[str, Any]) -> datetime:
    """When an activity counts for `after`/`until`: a FILL's transaction time; a non-trade
    activity has only a date, taken as the start of that day in New York (the docs are
    silent; so `after` later that day leaves it out: the least convenient reading)."""
    if a.get("transaction_time"):
        return parse_time(str(a["transaction_time"]), "transaction_time")
    return datetime.combine(date.fromisoformat(str(a["date"])), time(0), tzinfo=EASTERN)


def activities(st: AccountState, q: Mapping[str, str]) -> list[dict[str, Any]]:
    """Activities of `activity_types` (all types when absent, as Alpaca), FILLs and the
    non-trade ones (ops.sim.corporate), with order_id, after/until/date, direction and
    page_size/page_token paging, ordered by id (ids sort chronologically). `order_id` keeps
    only that order's FILLs (Alpaca changelog 2026-07-29); an id that names no order of
    the account gives an empty list."""
    raw_types = q.get("activity_types")
    types = ({t.strip().upper() for t in raw_types.split(",") if t.strip()}
             if raw_types else None)
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
        if types is not None and str(a.get("activity_type")) not in types:
            continue
        if order_id and a.get("order_id") != order_id:
            continue
        ts = _activity_time(a)
        if (after and ts <= after) or (until and ts >= until):
            continue
        if day and _activity_day(a) != day:
            continue
        if token and (a["id"] <= token if direction == "asc" else a["id"] >= token):
            continue
        out.append(dict(a))
    return out[: max(page_size, 0)]
