"""Raw broker JSON (dicts) -> ops.core.models types, tolerantly.

The adapter reads the broker's JSON itself (REST and stream) and converts it here rather
than through alpaca-py's pydantic models, which reject unknown enum values and numbers
where they expect strings (docs/broker-protocol.md 1.6, 6.3). Rules: statuses, events, sides and
types are kept verbatim as strings; optional fields may be absent or null; numbers may
arrive as strings or JSON numbers; a missing or unparsable *required* field raises
BrokerDataError naming the field and the value. No alpaca-py import here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ops.broker.errors import BrokerDataError
from ops.core.models import (
    AccountInfo,
    Bar,
    Clock,
    Fill,
    NonTradeActivity,
    Order,
    Position,
    Quote,
    TradeUpdate,
)

_MISSING = object()


def _fail(what: str, key: str, value: object, why: str) -> BrokerDataError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return BrokerDataError(what, f"field {key!r} = {shown}: {why}")


def as_mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BrokerDataError(what, f"expected a JSON object, got {type(value).__name__}")
    return value


def req_str(d: Mapping[str, Any], key: str, what: str) -> str:
    v = d.get(key, _MISSING)
    if v is _MISSING or v is None:
        raise _fail(what, key, None, "required field is missing")
    if not isinstance(v, str) or not v:
        raise _fail(what, key, v, "expected a non-empty string")
    return v


def opt_str(d: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    v = d.get(key)
    if v is None:
        return default
    return str(v)


def _to_dec(v: object, key: str, what: str) -> Decimal:
    # Hot path (every number of every trade update): exact-type checks, and a str goes to
    # Decimal as is (str(v) would be the same object).
    if type(v) is not str and (isinstance(v, bool)
                               or not isinstance(v, (str, int, float, Decimal))):
        raise _fail(what, key, v, "expected a decimal number")
    try:
        out = Decimal(v if type(v) is str else str(v))
    except InvalidOperation:
        raise _fail(what, key, v, "expected a decimal number") from None
    if not out.is_finite():
        raise _fail(what, key, v, "expected a finite number")
    return out


def req_dec(d: Mapping[str, Any], key: str, what: str) -> Decimal:
    v = d.get(key)
    if v is None or v == "":
        raise _fail(what, key, v, "required number is missing")
    return _to_dec(v, key, what)


def opt_dec(d: Mapping[str, Any], key: str, what: str) -> Decimal | None:
    v = d.get(key)
    if v is None or v == "":
        return None
    if type(v) is str:  # the usual case, inlined: this runs ~10 times per trade update
        try:
            out = Decimal(v)
        except InvalidOperation:
            raise _fail(what, key, v, "expected a decimal number") from None
        if out.is_finite():
            return out
    return _to_dec(v, key, what)


def dec_or(d: Mapping[str, Any], key: str, what: str, default: Decimal) -> Decimal:
    v = opt_dec(d, key, what)
    return default if v is None else v


def opt_int(d: Mapping[str, Any], key: str, what: str) -> int | None:
    """A whole number given as a JSON number or a string ("3"), or None when absent."""
    v = d.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise _fail(what, key, v, "expected a whole number")
    if isinstance(v, int):
        return v
    out = _to_dec(v, key, what)
    if out != out.to_integral_value():
        raise _fail(what, key, v, "expected a whole number")
    return int(out)


def opt_bool(d: Mapping[str, Any], key: str, what: str) -> bool | None:
    """true/false (or the strings "true"/"false"), or None when absent."""
    v = d.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise _fail(what, key, v, "expected true or false")


def parse_ts(v: object, key: str, what: str) -> datetime:
    """ISO-8601 with 'Z' or an offset, up to nanoseconds; naive values are taken as UTC."""
    if isinstance(v, datetime):
        ts = v
    elif isinstance(v, str):
        try:
            ts = datetime.fromisoformat(v)
        except ValueError:
            raise _fail(what, key, v, "expected an ISO-8601 timestamp") from None
    else:
        raise _fail(what, key, v, "expected an ISO-8601 timestamp")
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def req_ts(d: Mapping[str, Any], key: str, what: str) -> datetime:
    v = d.get(key)
    if v is None or v == "":
        raise _fail(what, key, v, "required timestamp is missing")
    return parse_ts(v, key, what)


def opt_ts(d: Mapping[str, Any], key: str, what: str) -> datetime | None:
    v = d.get(key)
    if v is None or v == "":
        return None
    if type(v) is str:  # the usual case, inlined (hot path)
        try:
            ts = datetime.fromisoformat(v)
        except ValueError:
            raise _fail(what, key, v, "expected an ISO-8601 timestamp") from None
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return parse_ts(v, key, what)


def order_from_raw(raw: object) -> Order:
    d = as_mapping(raw, "order")
    oid = d.get("id")
    what = f"order {oid}" if isinstance(oid, str) else "order"
    order_id = req_str(d, "id", what)
    created_at = req_ts(d, "created_at", what)
    order_type = opt_str(d, "type") or opt_str(d, "order_type") or ""
    return Order(
        id=order_id,
        client_order_id=req_str(d, "client_order_id", what),
        symbol=opt_str(d, "symbol", "") or "",
        side=opt_str(d, "side", "") or "",
        order_type=order_type,
        time_in_force=opt_str(d, "time_in_force", "") or "",
        status=req_str(d, "status", what),
        created_at=created_at,
        updated_at=opt_ts(d, "updated_at", what) or created_at,
        submitted_at=opt_ts(d, "submitted_at", what),
        qty=opt_dec(d, "qty", what),
        notional=opt_dec(d, "notional", what),
        filled_qty=dec_or(d, "filled_qty", what, Decimal(0)),
        filled_avg_price=opt_dec(d, "filled_avg_price", what),
        limit_price=opt_dec(d, "limit_price", what),
        stop_price=opt_dec(d, "stop_price", what),
        asset_class=opt_str(d, "asset_class", "us_equity") or "us_equity",
        filled_at=opt_ts(d, "filled_at", what),
        canceled_at=opt_ts(d, "canceled_at", what),
        replaces=opt_str(d, "replaces"),
        replaced_by=opt_str(d, "replaced_by"),
        raw=dict(d),
    )


def trade_update_from_raw(msg: object, raw_json: str | None = None) -> TradeUpdate:
    """One `{"stream":"trade_updates","data":{...}}` envelope -> TradeUpdate.

    A missing `timestamp` falls back to the order's `updated_at` (deterministic, so a
    duplicate delivery still yields the same event_key). `raw_json`: the JSON text `msg`
    was decoded from, kept for storage (TradeUpdate.raw_json).
    """
    env = as_mapping(msg, "trade update")
    data = as_mapping(env.get("data"), "trade update 'data'")
    what = "trade update"
    event = req_str(data, "event", what)
    order = order_from_raw(data.get("order"))
    what = f"trade update {event} for order {order.id}"
    ts = opt_ts(data, "timestamp", what) or order.updated_at
    return TradeUpdate(
        event=event,
        order=order,
        timestamp=ts,
        execution_id=opt_str(data, "execution_id"),
        price=opt_dec(data, "price", what),
        qty=opt_dec(data, "qty", what),
        position_qty=opt_dec(data, "position_qty", what),
        raw=dict(env),
        raw_json=raw_json,
    )


def account_from_raw(raw: object) -> AccountInfo:
    d = as_mapping(raw, "account")
    what = "account"
    equity = req_dec(d, "equity", what)
    return AccountInfo(
        account_id=req_str(d, "id", what),
        account_number=req_str(d, "account_number", what),
        status=opt_str(d, "status", "") or "",
        currency=opt_str(d, "currency", "USD") or "USD",
        cash=req_dec(d, "cash", what),
        equity=equity,
        last_equity=dec_or(d, "last_equity", what, equity),
        buying_power=req_dec(d, "buying_power", what),
        options_buying_power=opt_dec(d, "options_buying_power", what),
        long_market_value=opt_dec(d, "long_market_value", what),
        short_market_value=opt_dec(d, "short_market_value", what),
        # Possibly absent (docs/broker-protocol.md 3.1, 3.7a, 6.10): None, never a guess.
        options_trading_level=opt_int(d, "options_trading_level", what),
        pattern_day_trader=opt_bool(d, "pattern_day_trader", what),
        daytrade_count=opt_int(d, "daytrade_count", what),
    )


def clock_from_raw(raw: object) -> Clock:
    d = as_mapping(raw, "clock")
    is_open = d.get("is_open")
    if not isinstance(is_open, bool):
        raise _fail("clock", "is_open", is_open, "expected true or false")
    return Clock(
        timestamp=req_ts(d, "timestamp", "clock"),
        is_open=is_open,
        next_open=req_ts(d, "next_open", "clock"),
        next_close=req_ts(d, "next_close", "clock"),
    )


def position_from_raw(raw: object) -> Position:
    d = as_mapping(raw, "position")
    sym = d.get("symbol")
    what = f"position {sym}" if isinstance(sym, str) else "position"
    qty = req_dec(d, "qty", what)
    return Position(
        symbol=req_str(d, "symbol", what),
        qty=qty,
        avg_entry_price=req_dec(d, "avg_entry_price", what),
        cost_basis=req_dec(d, "cost_basis", what),
        asset_class=opt_str(d, "asset_class", "us_equity") or "us_equity",
        side=opt_str(d, "side") or ("short" if qty < 0 else "long"),
        market_value=opt_dec(d, "market_value", what),
        current_price=opt_dec(d, "current_price", what),
        lastday_price=opt_dec(d, "lastday_price", what),
        unrealized_pl=opt_dec(d, "unrealized_pl", what),
        unrealized_plpc=opt_dec(d, "unrealized_plpc", what),
        qty_available=opt_dec(d, "qty_available", what),
    )


def fill_from_raw(raw: object) -> Fill:
    d = as_mapping(raw, "fill activity")
    fid = d.get("id")
    what = f"fill activity {fid}" if isinstance(fid, str) else "fill activity"
    qty = req_dec(d, "qty", what)
    return Fill(
        id=req_str(d, "id", what),
        order_id=req_str(d, "order_id", what),
        symbol=req_str(d, "symbol", what),
        side=opt_str(d, "side", "") or "",
        price=req_dec(d, "price", what),
        qty=qty,
        cum_qty=dec_or(d, "cum_qty", what, qty),
        leaves_qty=dec_or(d, "leaves_qty", what, Decimal(0)),
        transaction_time=req_ts(d, "transaction_time", what),
        fill_type=opt_str(d, "type", "fill") or "fill",
        order_status=opt_str(d, "order_status"),
    )


def _lenient_dec(d: Mapping[str, Any], key: str) -> Decimal | None:
    """A number that may be absent, null or garbage (then None: the raw item keeps it)."""
    try:
        return opt_dec(d, key, "activity")
    except BrokerDataError:
        return None


def _lenient_date(v: object) -> date | None:
    """`date` as Alpaca sends it ("2023-07-21"), or a timestamp's own calendar date."""
    if not isinstance(v, str) or not v:
        return None
    try:
        return date.fromisoformat(v[:10])
    except ValueError:
        return None


def activity_from_raw(raw: object) -> NonTradeActivity:
    """One non-trade activity, as tolerantly as the broker's future allows: only an `id`
    is required (without it an activity cannot be applied exactly once); an unknown
    `activity_type` is kept verbatim; a number or date that does not parse becomes None,
    the raw item keeping what was sent."""
    d = as_mapping(raw, "activity")
    aid = d.get("id")
    what = f"activity {aid}" if isinstance(aid, str) else "activity"
    activity_id = req_str(d, "id", what)
    try:
        ts = opt_ts(d, "transaction_time", what)
    except BrokerDataError:
        ts = None
    day = _lenient_date(d.get("date"))
    if day is None and ts is not None:
        day = ts.date()
    symbol = d.get("symbol")
    return NonTradeActivity(
        id=activity_id,
        activity_type=str(d.get("activity_type") or ""),
        symbol=symbol if isinstance(symbol, str) and symbol else None,
        qty=_lenient_dec(d, "qty"),
        price=_lenient_dec(d, "price"),
        date=day,
        transaction_time=ts,
        net_amount=_lenient_dec(d, "net_amount"),
        status=opt_str(d, "status"),
        description=opt_str(d, "description"),
        raw=dict(d),
    )


def quote_from_raw(symbol: str, raw: object) -> Quote:
    d = as_mapping(raw, f"quote {symbol}")
    what = f"quote {symbol}"
    return Quote(
        symbol=symbol,
        bid=req_dec(d, "bp", what),
        ask=req_dec(d, "ap", what),
        timestamp=req_ts(d, "t", what),
    )


def trade_price_from_raw(symbol: str, raw: object) -> Decimal:
    return req_dec(as_mapping(raw, f"trade {symbol}"), "p", f"trade {symbol}")


def bar_from_raw(symbol: str, raw: object) -> Bar:
    d = as_mapping(raw, f"bar {symbol}")
    what = f"bar {symbol}"
    return Bar(
        symbol=symbol,
        timestamp=req_ts(d, "t", what),
        open=req_dec(d, "o", what),
        high=req_dec(d, "h", what),
        low=req_dec(d, "l", what),
        close=req_dec(d, "c", what),
        volume=dec_or(d, "v", what, Decimal(0)),
    )
