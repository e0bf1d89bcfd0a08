"""Trading REST of the simulator, driven by the real alpaca-py TradingClient."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order, Position
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetCalendarRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
)

from ops.sim import Simulator

from .conftest import trading


def market(symbol: str, qty: float, side: OrderSide = OrderSide.BUY,
           cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY,
                              client_order_id=cid)


def occ(days: int = 30, right: str = "C", strike: int = 190) -> str:
    expiry = datetime.now(UTC) + timedelta(days=days)
    return f"AAPL{expiry:%y%m%d}{right}{strike * 1000:08d}"


async def raw(sim: Simulator, method: str, path: str, name: str | None = "large",
              **kw: Any) -> tuple[int, Any, dict[str, str]]:
    headers = {}
    if name is not None:
        spec = sim.account(name)
        headers = {"APCA-API-KEY-ID": spec.key_id, "APCA-API-SECRET-KEY": spec.secret}
    async with aiohttp.ClientSession() as session, session.request(
        method, sim.rest_url + path, headers=headers, **kw
    ) as resp:
        text = await resp.text()
        body = await resp.json(content_type=None) if text else None
        return resp.status, body, dict(resp.headers)


async def test_account_clock_calendar_asset(sim: Simulator) -> None:
    c = trading(sim)
    acct = await c.account()
    assert acct.account_number == "PASIM0000001"
    assert acct.cash == "100000" and acct.equity == "100000"
    assert acct.buying_power == "200000" and acct.multiplier == "2"
    tiny = await trading(sim, "tiny").account()
    assert tiny.account_number == "PASIM0000002" and tiny.buying_power == "1000"
    assert tiny.shorting_enabled is False
    clock = await c.clock()
    assert clock.is_open is True
    assert clock.timestamp.utcoffset() in (timedelta(hours=-4), timedelta(hours=-5))
    cal = await c.calendar(GetCalendarRequest())
    assert cal and all(d.open.hour == 9 and d.close.hour == 16 for d in cal)
    asset = await c.asset("AAPL")
    assert asset.symbol == "AAPL" and asset.tradable
    with pytest.raises(APIError) as err:
        await c.asset("NOT_A_TICKER1")
    assert err.value.status_code == 404


async def test_submit_get_list_cancel_replace(sim: Simulator) -> None:
    c = trading(sim)
    filled = await c.submit(market("AAPL", 5, cid="t-1"))
    assert isinstance(filled, Order)
    assert filled.status == OrderStatus.FILLED and filled.filled_qty == "5"
    assert filled.client_order_id == "t-1"
    resting = await c.submit(LimitOrderRequest(
        symbol="MSFT", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=100))
    assert resting.status == OrderStatus.NEW and resting.limit_price == "100"
    got = await c.order(resting.id)
    assert got.id == resting.id
    by_cid = await c.order_by_cid("t-1")
    assert by_cid.id == filled.id
    open_orders = await c.orders()
    assert [o.id for o in open_orders] == [resting.id]

    new = await c.replace(resting.id,
                                  ReplaceOrderRequest(limit_price=101, qty=4))
    assert isinstance(new, Order)
    assert new.id != resting.id and new.replaces == resting.id and new.qty == "4"
    old = await c.order(resting.id)
    assert old.status == OrderStatus.REPLACED and old.replaced_by == new.id
    with pytest.raises(APIError) as err:
        await c.replace(new.id, ReplaceOrderRequest(qty=4))
    assert err.value.status_code == 403 and "not changed" in err.value.message

    await c.cancel(new.id)
    canceled = await c.order(new.id)
    assert canceled.status == OrderStatus.CANCELED and canceled.canceled_at is not None
    status, body, _ = await raw(sim, "DELETE", f"/v2/orders/{new.id}")
    assert status == 422 and body["code"] == 42210000

    every = await c.orders(GetOrdersRequest(
        status=QueryOrderStatus.ALL, direction=Sort.ASC, nested=True))
    assert [o.id for o in every] == [filled.id, resting.id, new.id]
    closed = await c.orders(GetOrdersRequest(
        status=QueryOrderStatus.CLOSED, symbols=["MSFT"], limit=1))
    assert [o.id for o in closed] == [new.id]


async def test_every_documented_order_key_is_present(sim: Simulator) -> None:
    status, body, _ = await raw(sim, "POST", "/v2/orders", json={
        "symbol": "AAPL", "qty": "2", "side": "buy", "type": "limit",
        "time_in_force": "day", "limit_price": "1.5"})
    assert status == 200
    for key in ("id", "client_order_id", "created_at", "updated_at", "submitted_at",
                "filled_at", "expired_at", "expires_at", "canceled_at", "failed_at",
                "replaced_at", "replaced_by", "replaces", "asset_id", "symbol", "asset_class",
                "notional", "qty", "filled_qty", "filled_avg_price", "order_class",
                "order_type", "type", "side", "time_in_force", "limit_price", "stop_price",
                "status", "extended_hours", "legs", "trail_percent", "trail_price", "hwm",
                "position_intent", "ratio_qty"):
        assert key in body, key
    assert body["order_class"] == "" and body["qty"] == "2" and body["limit_price"] == "1.5"
    assert body["created_at"].endswith("Z") and body["filled_avg_price"] is None


async def test_cancel_all_is_207(sim: Simulator) -> None:
    c = trading(sim)
    ids = set()
    for px in (100, 101):
        o = await c.submit(LimitOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
            limit_price=px))
        ids.add(o.id)
    status, body, _ = await raw(sim, "DELETE", "/v2/orders")
    assert status == 207 and {b["id"] for b in body} == {str(i) for i in ids}
    assert await c.cancel_all() == []


async def test_duplicate_client_order_id_is_422_forever(sim: Simulator) -> None:
    c = trading(sim)
    await c.submit(market("AAPL", 1, cid="dup-1"))
    for _ in range(2):
        with pytest.raises(APIError) as err:
            await c.submit(market("MSFT", 1, cid="dup-1"))
        assert err.value.status_code == 422
        assert err.value.code == 40010001 and err.value.message == "client_order_id must be unique"
    # Unique per account, not globally.
    tiny = trading(sim, "tiny")
    other = await tiny.submit(market("AMD", 1, cid="dup-1"))
    assert isinstance(other, Order) and other.client_order_id == "dup-1"


@pytest.mark.parametrize(
    ("body", "status", "code", "text"),
    [
        ({"symbol": "AAPL", "qty": 0}, 422, 40010001, "qty must be > 0"),
        ({"symbol": "AAPL", "qty": -3}, 422, 40010001, "qty must be > 0"),
        ({"symbol": "AAPL"}, 422, 40010001, "qty or notional is required"),
        ({"symbol": "AAPL", "qty": "abc"}, 422, 40010001, "invalid qty"),
        ({"symbol": occ(), "qty": 1.5}, 422, 40010001, "integer"),
        ({"symbol": "BOGUS_1", "qty": 1}, 422, 42210000, 'asset "BOGUS_1" not found'),
        ({"symbol": "AAPL", "qty": 1, "side": "hold"}, 422, 40010001, "invalid side"),
        ({"symbol": "AAPL", "qty": 1, "type": "limit"}, 422, 40010001, "limit_price"),
        ({"symbol": "AAPL", "qty": 100000}, 403, 40310000, "insufficient buying power"),
    ],
)
async def test_rejections(sim: Simulator, body: dict[str, Any], status: int, code: int,
                          text: str) -> None:
    full = {"side": "buy", "type": "market", "time_in_force": "day"} | body
    got_status, got, _ = await raw(sim, "POST", "/v2/orders", json=full)
    assert (got_status, got["code"]) == (status, code)
    assert text in got["message"]
    assert sim.engine.states["large"].orders == {}


async def test_buying_power_403_carries_amounts(sim: Simulator) -> None:
    with pytest.raises(APIError) as err:
        await trading(sim, "tiny").submit(market("AAPL", 10))
    assert err.value.status_code == 403 and err.value.code == 40310000
    body = err.value._error  # the raw JSON text
    assert '"buying_power":"1000"' in body and '"cost_basis":"1900.' in body


async def test_selling_more_than_held_without_shorting(sim: Simulator) -> None:
    c = trading(sim, "tiny")
    await c.submit(market("AMD", 2))
    with pytest.raises(APIError) as err:
        await c.submit(market("AMD", 5, OrderSide.SELL))
    assert err.value.status_code == 403
    assert err.value.message == "insufficient qty available for order (requested: 5, available: 2)"
    with pytest.raises(APIError) as err:
        await c.submit(market("MSFT", 1, OrderSide.SELL))
    assert err.value.message == "account is not allowed to short"


async def test_numbers_or_strings_and_duplicate_slashes(sim: Simulator) -> None:
    for qty in (1, 1.0, "1"):
        status, body, _ = await raw(sim, "POST", "//v2//orders", json={
            "symbol": "SPY", "qty": qty, "side": "buy", "type": "limit",
            "time_in_force": "gtc", "limit_price": 1.25})
        assert status == 200 and body["qty"] == "1" and body["limit_price"] == "1.25"
    status, body, _ = await raw(sim, "GET", "//v2/account")
    assert status == 200 and body["account_number"] == "PASIM0000001"


async def test_stock_and_option_positions(sim: Simulator) -> None:
    c = trading(sim)
    await c.submit(market("AAPL", 10))
    symbol = occ()
    opt = await c.submit(market(symbol, 2))
    assert opt.status == OrderStatus.FILLED
    premium = Decimal(str(opt.filled_avg_price))
    positions = {p.symbol: p for p in await c.positions()}
    stock = positions["AAPL"]
    assert stock.qty == "10" and stock.side == "long" and stock.asset_class == "us_equity"
    option = positions[symbol]
    assert option.asset_class == "us_option" and option.exchange == ""
    assert Decimal(option.cost_basis) == premium * 2 * 100
    current = Decimal(str(option.current_price))
    assert Decimal(str(option.market_value)) == current * 2 * 100
    one = await c.position(symbol)
    assert isinstance(one, Position) and one.qty == "2"
    acct = await c.account()
    spent = Decimal(str(stock.cost_basis)) + premium * 200
    assert Decimal(str(acct.cash)) == Decimal(100000) - spent
    # Move the price: unrealized P&L follows.
    sim.market.set_price("AAPL", Decimal(200))
    moved = await c.position("AAPL")
    assert Decimal(str(moved.unrealized_pl)) == 10 * 200 - Decimal(str(stock.cost_basis))
    with pytest.raises(APIError) as err:
        await c.position("MSFT")
    assert err.value.status_code == 404


async def test_short_position_and_close(sim: Simulator) -> None:
    c = trading(sim)
    await c.submit(market("TSLA", 10, OrderSide.SELL))
    pos = await c.position("TSLA")
    assert pos.qty == "-10" and pos.side == "short" and Decimal(str(pos.market_value)) < 0
    order = await c.close("TSLA", ClosePositionRequest(qty="4"))
    assert isinstance(order, Order) and order.side == OrderSide.BUY and order.qty == "4"
    pos = await c.position("TSLA")
    assert pos.qty == "-6"
    order = await c.close("TSLA",
                                    ClosePositionRequest(percentage="50"))
    assert isinstance(order, Order) and order.qty == "3"
    await c.submit(market("NVDA", 5))
    results = await c.close_all(True)
    assert sorted((r.symbol, r.status) for r in results) == [("NVDA", 200), ("TSLA", 200)]
    assert await c.positions() == []
    status, _, _ = await raw(sim, "DELETE", "/v2/positions")
    assert status == 207


async def test_limit_order_fills_when_crossed(sim: Simulator) -> None:
    c = trading(sim)
    sim.market.set_price("AMD", Decimal(160))
    o = await c.submit(LimitOrderRequest(
        symbol="AMD", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=150))
    sim.market.step()
    assert (await c.order(o.id)).status == OrderStatus.NEW
    sim.market.set_price("AMD", Decimal(149))
    sim.market.step()
    done = await c.order(o.id)
    assert done.status == OrderStatus.FILLED
    assert Decimal(str(done.filled_avg_price)) <= 150


async def test_partial_fills_add_up_and_match_activities(sim: Simulator) -> None:
    c = trading(sim)
    o = await c.submit(market("SPY", 250))
    assert o.status == OrderStatus.PARTIALLY_FILLED and o.filled_qty == "100"
    sim.market.step()
    sim.market.step()
    done = await c.order(o.id)
    assert done.status == OrderStatus.FILLED and done.filled_qty == "250"
    fills = await c.get("/account/activities/FILL", {"direction": "asc"})
    assert isinstance(fills, list)
    mine = [f for f in fills if f["order_id"] == str(o.id)]
    assert [f["qty"] for f in mine] == ["100", "100", "50"]
    assert [f["type"] for f in mine] == ["partial_fill", "partial_fill", "fill"]
    assert [f["cum_qty"] for f in mine] == ["100", "200", "250"]
    notional = sum((Decimal(f["price"]) * Decimal(f["qty"]) for f in mine), Decimal(0))
    assert Decimal(str(done.filled_avg_price)) == (notional / 250).quantize(Decimal("0.000001"))
    for f in mine:
        stamp, _, uid = f["id"].partition("::")
        assert len(stamp) == 17 and stamp.isdigit() and len(uid) == 36


async def test_activities_paging(sim: Simulator) -> None:
    c = trading(sim)
    for _ in range(5):
        await c.submit(market("QQQ", 1))
    all_desc = await c.get("/account/activities/FILL", {})
    assert isinstance(all_desc, list) and len(all_desc) == 5
    assert [a["id"] for a in all_desc] == sorted((a["id"] for a in all_desc), reverse=True)
    page1 = await c.get("/account/activities", {
        "activity_types": "FILL", "direction": "asc", "page_size": 2})
    assert isinstance(page1, list) and len(page1) == 2
    page2 = await c.get("/account/activities/FILL", {
        "direction": "asc", "page_size": 2, "page_token": page1[-1]["id"]})
    assert isinstance(page2, list)
    assert [a["id"] for a in page1 + page2] == [a["id"] for a in reversed(all_desc)][:4]
    later = await c.get("/account/activities/FILL", {
        "after": page1[-1]["transaction_time"]})
    assert isinstance(later, list) and len(later) == 3


async def test_accounts_are_isolated(sim: Simulator) -> None:
    large, tiny = trading(sim), trading(sim, "tiny")
    o = await large.submit(LimitOrderRequest(
        symbol="IWM", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1))
    await large.submit(market("IWM", 2, cid="iso"))
    with pytest.raises(APIError) as err:
        await tiny.order(o.id)
    assert err.value.status_code == 404
    with pytest.raises(APIError) as err:
        await tiny.cancel(o.id)
    assert err.value.status_code == 404
    with pytest.raises(APIError):
        await tiny.order_by_cid("iso")
    assert await tiny.orders() == []
    assert await tiny.positions() == []
    assert await tiny.cancel_all() == []
    assert (await large.order(o.id)).status == OrderStatus.NEW


async def test_wrong_or_missing_key_is_401(sim: Simulator) -> None:
    wrong = trading(sim, secret="not-the-secret")
    with pytest.raises(APIError) as err:
        await wrong.account()
    assert err.value.status_code == 401 and err.value.code == 40110000
    assert err.value.message == "request is not authorized"
    status, body, _ = await raw(sim, "GET", "/v2/account", name=None)
    assert status == 401 and body == {"code": 40110000, "message": "request is not authorized"}


async def test_closed_market_accepts_then_fills_at_open(sim: Simulator) -> None:
    sim.faults.set_clock("closed")
    c = trading(sim)
    o = await c.submit(market("AAPL", 3))
    assert o.status == OrderStatus.ACCEPTED
    sim.market.step()
    assert (await c.order(o.id)).status == OrderStatus.ACCEPTED
    assert (await c.clock()).is_open is False
    sim.faults.set_clock("open")
    filled = await c.order(o.id)
    assert filled.status == OrderStatus.FILLED and filled.filled_qty == "3"


async def test_nyse_clock_follows_regular_hours(sim: Simulator) -> None:
    sim.faults.set_clock("nyse")
    sim.clock.freeze(datetime(2026, 11, 23, 14, 0, tzinfo=UTC))  # Monday 09:00 ET
    c = trading(sim)
    clock = await c.clock()
    assert clock.is_open is False
    assert clock.next_open == datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    o = await c.submit(market("MSFT", 1))
    assert o.status == OrderStatus.ACCEPTED
    day = await c.submit(LimitOrderRequest(
        symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1))
    sim.clock.freeze(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))  # 10:00 ET: open
    sim.market.step()
    assert (await c.order(o.id)).status == OrderStatus.FILLED
    assert (await c.clock()).is_open is True
    sim.clock.freeze(datetime(2026, 11, 23, 21, 5, tzinfo=UTC))  # 16:05 ET: closed
    sim.market.step()
    assert (await c.order(day.id)).status == OrderStatus.EXPIRED
    sim.clock.freeze(datetime(2026, 11, 28, 15, 0, tzinfo=UTC))  # Saturday
    assert (await c.clock()).is_open is False
