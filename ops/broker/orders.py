"""ops.core.models order requests -> the JSON bodies of POST /v2/orders and PATCH /v2/orders/{id}
(docs/broker-protocol.md 3.5).

Checked before sending, as alpaca-py's request models did, so that a request the broker
would refuse fails here with a ValueError naming the field and the value: client_order_id
1..128 characters, a known position_intent, no price field the order type does not take,
a whole replace qty and at least one field to replace. (ops.core.models.OrderRequest itself
checks qty xor notional and the prices each type needs.)

Numbers are sent as decimal strings, the form Alpaca documents, so no float rounds a
price or a fractional quantity; enums by value; unset fields are omitted, never null.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ops.core.models import OrderRequest, OrderType, TimeInForce

POSITION_INTENTS = ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close")

# The price fields each supported order type takes (trailing stops are not supported).
_PRICES: dict[OrderType, tuple[str, ...]] = {
    OrderType.MARKET: (),
    OrderType.LIMIT: ("limit_price",),
    OrderType.STOP: ("stop_price",),
    OrderType.STOP_LIMIT: ("stop_price", "limit_price"),
}


def dec(value: Decimal) -> str:
    """A decimal in plain notation ("0.00001", "100"), never an exponent ("1E+2")."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    return format(value, "f")


def build_order_request(req: OrderRequest) -> dict[str, Any]:
    """The POST /v2/orders body for `req`."""
    if not req.client_order_id or len(req.client_order_id) > 128:
        raise ValueError(f"client_order_id = {req.client_order_id!r}: 1 to 128 characters")
    kind = req.order_type
    if kind not in _PRICES:
        raise ValueError(f"order_type = {kind.value!r} is not supported by the adapter")
    body: dict[str, Any] = {"symbol": req.symbol}
    if req.qty is not None:
        body["qty"] = dec(req.qty)
    if req.notional is not None:
        body["notional"] = dec(req.notional)
    body |= {"side": req.side.value, "type": kind.value,
             "time_in_force": req.time_in_force.value, "client_order_id": req.client_order_id}
    for name in ("limit_price", "stop_price"):
        value: Decimal | None = getattr(req, name)
        if value is None:
            continue
        if name not in _PRICES[kind]:
            raise ValueError(f"{name} = {value}: not taken by {kind.value} orders")
        body[name] = dec(value)
    if req.position_intent is not None:
        if req.position_intent not in POSITION_INTENTS:
            raise ValueError(f"position_intent = {req.position_intent!r} is not one of "
                             f"{list(POSITION_INTENTS)}")
        body["position_intent"] = req.position_intent
    return body


def build_replace_request(
    qty: Decimal | None,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    time_in_force: str | None,
    client_order_id: str | None,
) -> dict[str, Any]:
    """The PATCH /v2/orders/{id} body: only the fields to change."""
    if qty is not None and qty != qty.to_integral_value():
        raise ValueError(f"replace qty = {qty}: must be a whole number")
    if time_in_force is not None and time_in_force not in {t.value for t in TimeInForce}:
        raise ValueError(f"replace time_in_force = {time_in_force!r} is not valid")
    if client_order_id is not None and not 1 <= len(client_order_id) <= 128:
        raise ValueError(f"replace client_order_id = {client_order_id!r}: 1 to 128 "
                         "characters")
    body: dict[str, Any] = {}
    if qty is not None:
        body["qty"] = str(int(qty))
    if limit_price is not None:
        body["limit_price"] = dec(limit_price)
    if stop_price is not None:
        body["stop_price"] = dec(stop_price)
    if time_in_force is not None:
        body["time_in_force"] = time_in_force
    if client_order_id is not None:
        body["client_order_id"] = client_order_id
    if not body:
        raise ValueError("replace_order needs at least one field to change")
    return body
