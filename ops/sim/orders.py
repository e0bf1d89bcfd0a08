"""Parsing and validating order requests (POST /v2/orders, PATCH /v2/orders/{id}).

Turns a JSON body (numbers or strings accepted, as alpaca-py sends floats) into a
`NewOrder`, raising `ApiError` with Alpaca's codes and texts for bad input. Account-
dependent checks (buying power, held quantity) are the engine's job; the options level
and pattern-day-trading refusals are ledger.py's, applied by the REST layer.

Single-leg options (docs/broker-protocol.md 3.5, 3.7a, changelog 2026-08-27): market, limit, stop
and stop_limit, time in force day or gtc only (anything else is refused with the text
Alpaca has been seen to send: "order_time_in_force provided not supported for options
trading"), whole contracts, no notional, no extended hours, no trailing stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ops.sim.wire import ApiError, parse_decimal, unprocessable

SIDES = ("buy", "sell")
TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIFS = ("day", "gtc", "opg", "cls", "ioc", "fok")
INTENTS = ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close")
OPTION_TIFS = ("day", "gtc")
MAX_CLIENT_ID = 128


PDT_MESSAGE = "trade denied due to pattern day trading protection"


@dataclass
class OrderRefusal:
    """Fault: refuse the next `remaining` orders matching account/side/symbol (None = any)
    at the REST level, as the broker does (docs/broker-protocol.md section 5): nothing is created,
    the answer is `status` with body `{"code": code, "message": message, **extra}`.
    Consulted by order submission and by closing a position (`DELETE /v2/positions/...`).
    """

    remaining: int
    status: int = 403
    code: int | None = 40310100
    message: str = PDT_MESSAGE
    account: str | None = None
    side: str | None = None
    symbol: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.remaining < 1:
            raise ValueError(f"n must be >= 1, got {self.remaining}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {self.status}")
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"side must be one of {SIDES} or null, got {self.side!r}")
        if self.symbol is not None:
            self.symbol = self.symbol.upper()

    def matches(self, account: str, side: str, symbol: str) -> bool:
        return (self.remaining > 0 and self.account in (None, account)
                and self.side in (None, side) and self.symbol in (None, symbol.upper()))

    def error(self) -> ApiError:
        return ApiError(self.status, self.code, self.message, dict(self.extra))


@dataclass(frozen=True, slots=True)
class NewOrder:
    symbol: str
    side: str
    type: str
    time_in_force: str
    client_order_id: str | None
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    trail_price: Decimal | None
    trail_percent: Decimal | None
    extended_hours: bool
    position_intent: str | None


def _opt_price(body: dict[str, Any], name: str) -> Decimal | None:
    if body.get(name) is None:
        return None
    try:
        value = parse_decimal(body[name], name)
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    if value <= 0:
        raise unprocessable(f"{name} must be > 0")
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or value not in allowed:
        raise unprocessable(f"invalid {name}: {value!r} (expected one of {', '.join(allowed)})")
    return value


def parse_qty(raw: Any, *, option: bool) -> Decimal:
    try:
        qty = parse_decimal(raw, "qty")
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    if qty <= 0:
        raise unprocessable("qty must be > 0")
    if option and qty != qty.to_integral_value():
        raise unprocessable("qty must be integer for option orders")
    if qty.as_tuple().exponent < -9:  # type: ignore[operator]
        raise unprocessable("qty can have at most 9 decimal places")
    return qty


def parse_client_order_id(body: dict[str, Any]) -> str | None:
    cid = body.get("client_order_id")
    if cid is None:
        return None
    if not isinstance(cid, str) or not cid or len(cid) > MAX_CLIENT_ID:
        raise unprocessable(f"client_order_id must be a string of 1 to {MAX_CLIENT_ID} characters")
    return cid


def parse_new_order(body: dict[str, Any], *, option: bool) -> NewOrder:
    """Validate a submit body. `option` says whether the symbol is an OCC option."""
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise unprocessable("symbol is required")
    side = _choice(body, "side", SIDES, "")
    otype = _choice(body, "type", TYPES, "market")
    tif = _choice(body, "time_in_force", TIFS, "")
    order_class = body.get("order_class", "simple")
    if order_class not in ("simple", "", None):
        raise unprocessable(f"order_class {order_class!r} is not supported by the simulator")
    has_qty = body.get("qty") is not None
    has_notional = body.get("notional") is not None
    if has_qty == has_notional:
        raise unprocessable("qty or notional is required" if not has_qty else
                            "only one of qty or notional may be specified")
    qty = parse_qty(body["qty"], option=option) if has_qty else None
    notional = _opt_price(body, "notional")
    if notional is not None and (option or otype != "market" or tif != "day"):
        raise unprocessable("notional orders must be market day orders on equities")
    if qty is not None and qty != qty.to_integral_value() and (otype != "market" or tif != "day"):
        raise unprocessable("fractional orders must be market orders with time_in_force=day")
    limit_price = _opt_price(body, "limit_price")
    stop_price = _opt_price(body, "stop_price")
    trail_price = _opt_price(body, "trail_price")
    trail_percent = _opt_price(body, "trail_percent")
    if otype in ("limit", "stop_limit") and limit_price is None:
        raise unprocessable("limit_price is required for limit orders")
    if otype in ("stop", "stop_limit") and stop_price is None:
        raise unprocessable("stop_price is required for stop orders")
    if otype == "trailing_stop" and (trail_price is None) == (trail_percent is None):
        raise unprocessable("exactly one of trail_price or trail_percent is required")
    if otype == "trailing_stop" and option:
        raise unprocessable("trailing_stop orders are not supported for options")
    if option and tif not in OPTION_TIFS:
        raise ApiError(422, 42210000, "order_time_in_force provided not supported for "
                                      "options trading")
    extended = body.get("extended_hours", False)
    if not isinstance(extended, bool):
        raise unprocessable(f"invalid extended_hours: {extended!r}")
    if extended and (otype != "limit" or tif not in ("day", "gtc")):
        raise unprocessable('only type="limit" is allowed for extended hours orders')
    if extended and option:
        raise unprocessable("extended hours orders are not supported for options")
    intent = body.get("position_intent")
    if intent is not None and intent not in INTENTS:
        raise unprocessable(f"invalid position_intent: {intent!r}")
    return NewOrder(
        symbol=symbol,
        side=side,
        type=otype,
        time_in_force=tif,
        client_order_id=parse_client_order_id(body),
        qty=qty,
        notional=notional,
        limit_price=limit_price,
        stop_price=stop_price,
        trail_price=trail_price,
        trail_percent=trail_percent,
        extended_hours=extended,
        position_intent=intent,
    )


@dataclass(frozen=True, slots=True)
class ReplaceRequest:
    qty: Decimal | None
    time_in_force: str | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    trail: Decimal | None
    client_order_id: str | None


def parse_replace(body: dict[str, Any], *, option: bool) -> ReplaceRequest:
    tif = body.get("time_in_force")
    if tif is not None and tif not in TIFS:
        raise unprocessable(f"invalid time_in_force: {tif!r}")
    if option and tif is not None and tif not in OPTION_TIFS:
        raise ApiError(422, 42210000, "order_time_in_force provided not supported for "
                                      "options trading")
    return ReplaceRequest(
        qty=parse_qty(body["qty"], option=option) if body.get("qty") is not None else None,
        time_in_force=tif,
        limit_price=_opt_price(body, "limit_price"),
        stop_price=_opt_price(body, "stop_price"),
        trail=_opt_price(body, "trail"),
        client_order_id=parse_client_order_id(body),
    )


def not_replaceable(status: str) -> ApiError:
    return ApiError(422, 42210000, f"order is not replaceable in status {status}")
