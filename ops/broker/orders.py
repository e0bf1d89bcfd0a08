"""ops.models order requests -> alpaca-py request objects (which validate client-side).

Raises ValueError (pydantic's ValidationError is one) for a request alpaca-py or the
broker would refuse, naming the field and value.
"""

from __future__ import annotations

from decimal import Decimal

from ops.broker import _sdk as sdk
from ops.models import OrderRequest, OrderType


def _f(value: Decimal | None) -> float | None:
    # alpaca-py's request models take floats and send JSON numbers (alpaca-wire.md 1.4).
    return None if value is None else float(value)


def build_order_request(req: OrderRequest) -> sdk.SdkOrderRequest:
    common = {
        "symbol": req.symbol,
        "qty": _f(req.qty),
        "notional": _f(req.notional),
        "side": sdk.OrderSide(req.side.value),
        "time_in_force": sdk.TimeInForce(req.time_in_force.value),
        "client_order_id": req.client_order_id,
    }
    if req.position_intent is not None:
        try:
            common["position_intent"] = sdk.PositionIntent(req.position_intent)
        except ValueError:
            raise ValueError(f"position_intent = {req.position_intent!r} is not one of "
                             f"{[p.value for p in sdk.PositionIntent]}") from None
    if not req.client_order_id or len(req.client_order_id) > 128:
        raise ValueError(f"client_order_id = {req.client_order_id!r}: 1 to 128 characters")
    kind = req.order_type
    if kind is OrderType.MARKET:
        return sdk.MarketOrderRequest(**common)
    if kind is OrderType.LIMIT:
        return sdk.LimitOrderRequest(**common, limit_price=_f(req.limit_price))
    if kind is OrderType.STOP:
        return sdk.StopOrderRequest(**common, stop_price=_f(req.stop_price))
    if kind is OrderType.STOP_LIMIT:
        return sdk.StopLimitOrderRequest(
            **common, stop_price=_f(req.stop_price), limit_price=_f(req.limit_price)
        )
    raise ValueError(f"order_type = {kind.value!r} is not supported by the adapter")


def build_replace_request(
    qty: Decimal | None,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    time_in_force: str | None,
    client_order_id: str | None,
) -> sdk.ReplaceOrderRequest:
    if qty is not None and qty != qty.to_integral_value():
        raise ValueError(f"replace qty = {qty}: must be a whole number")
    try:
        tif = sdk.TimeInForce(time_in_force) if time_in_force is not None else None
    except ValueError:
        raise ValueError(f"replace time_in_force = {time_in_force!r} is not valid") from None
    if all(v is None for v in (qty, limit_price, stop_price, time_in_force, client_order_id)):
        raise ValueError("replace_order needs at least one field to change")
    return sdk.ReplaceOrderRequest(
        qty=int(qty) if qty is not None else None,
        limit_price=_f(limit_price),
        stop_price=_f(stop_price),
        time_in_force=tif,
        client_order_id=client_order_id,
    )
