"""Order types beyond market/limit, time-in-force handling, routing errors and lifecycle."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrdersRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
    TrailingStopOrderRequest,
)

from ops.sim import SimAccountSpec, SimConfig, Simulator
from tests.support import eventually

from .conftest import trading


async def post(sim: Simulator, body: dict[str, Any], path: str = "/v2/orders",
               method: str = "POST") -> tuple[int, Any]:
    spec = sim.account("large")
    headers = {"APCA-API-KEY-ID": spec.key_id, "APCA-API-SECRET-KEY": spec.secret}
    async with aiohttp.ClientSession() as session, session.request(
        method, sim.rest_url + path, headers=headers, json=body
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_notional_market_order(sim: Simulator) -> None:
    c = trading(sim)
    sim.market.set_price("MSFT", Decimal(400))
    o = await c.submit(MarketOrderRequest(symbol="MSFT", notional=1000, side=OrderSide.BUY,
                                          time_in_force=TimeInForce.DAY))
    assert o.status == OrderStatus.FILLED and o.qty is None and o.notional == "1000"
    qty = Decimal(str(o.filled_qty))
    assert Decimal("2.4") < qty < Decimal("2.5")
    assert (await c.position("MSFT")).qty == str(qty)


async def test_stop_and_stop_limit_trigger_on_last_price(sim: Simulator) -> None:
    c = trading(sim)
    await c.submit(MarketOrderRequest(symbol="TSLA", qty=10, side=OrderSide.BUY,
                                      time_in_force=TimeInForce.DAY))
    sim.market.set_price("TSLA", Decimal(220))
    stop = await c.submit(StopOrderRequest(symbol="TSLA", qty=5, side=OrderSide.SELL,
                                           time_in_force=TimeInForce.GTC, stop_price=210))
    stop_limit = await c.submit(StopLimitOrderRequest(
        symbol="TSLA", qty=5, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        stop_price=205, limit_price=204))
    sim.market.set_price("TSLA", Decimal(209))
    sim.market.step()
    assert (await c.order(stop.id)).status == OrderStatus.FILLED
    assert (await c.order(stop_limit.id)).status == OrderStatus.NEW
    sim.market.set_price("TSLA", Decimal(200))  # triggered, but below the limit
    sim.market.step()
    assert (await c.order(stop_limit.id)).status == OrderStatus.NEW
    sim.market.set_price("TSLA", Decimal("204.50"))
    sim.market.step()
    done = await c.order(stop_limit.id)
    assert done.status == OrderStatus.FILLED and Decimal(str(done.filled_avg_price)) >= 204


async def test_trailing_stop_follows_the_high_water_mark(sim: Simulator) -> None:
    c = trading(sim)
    await c.submit(MarketOrderRequest(symbol="AMD", qty=3, side=OrderSide.BUY,
                                      time_in_force=TimeInForce.DAY))
    sim.market.set_price("AMD", Decimal(100))
    o = await c.submit(TrailingStopOrderRequest(symbol="AMD", qty=3, side=OrderSide.SELL,
                                                time_in_force=TimeInForce.GTC, trail_price=5))
    assert o.hwm == "100" and o.stop_price == "95"
    sim.market.set_price("AMD", Decimal(110))
    sim.market.step()
    moved = await c.order(o.id)
    hwm = Decimal(str(moved.hwm))
    assert moved.status == OrderStatus.NEW and hwm > 105  # the step walked on from 110
    assert Decimal(str(moved.stop_price)) == hwm - 5
    sim.market.set_price("AMD", hwm - 6)
    sim.market.step()
    assert (await c.order(o.id)).status == OrderStatus.FILLED


async def test_ioc_and_fok(sim: Simulator) -> None:
    sim.market.set_price("IWM", Decimal(200))
    status, ioc = await post(sim, {"symbol": "IWM", "qty": 250, "side": "buy", "type": "market",
                                   "time_in_force": "ioc"})
    assert status == 200 and ioc["status"] == "canceled" and ioc["filled_qty"] == "100"
    status, fok = await post(sim, {"symbol": "IWM", "qty": 250, "side": "buy", "type": "market",
                                   "time_in_force": "fok"})
    assert status == 200 and fok["status"] == "canceled" and fok["filled_qty"] == "0"
    status, fok = await post(sim, {"symbol": "IWM", "qty": 50, "side": "buy", "type": "market",
                                   "time_in_force": "fok"})
    assert fok["status"] == "filled"


async def test_extended_hours_and_replace_rules(sim: Simulator) -> None:
    status, body = await post(sim, {"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market",
                                    "time_in_force": "day", "extended_hours": True})
    assert status == 422 and "extended hours" in body["message"]
    sim.faults.set_clock("closed")
    c = trading(sim)
    o = await c.submit(MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                          time_in_force=TimeInForce.DAY))
    status, body = await post(sim, {"qty": 2}, path=f"/v2/orders/{o.id}", method="PATCH")
    assert status == 422 and "accepted" in body["message"]
    with pytest.raises(Exception, match="not replaceable"):
        await c.replace(o.id, ReplaceOrderRequest(qty=2))


async def test_unknown_endpoints_and_methods(sim: Simulator) -> None:
    status, body = await post(sim, {}, path="/v2/nothing-here", method="GET")
    assert status == 404 and body["code"] == 40410000
    status, body = await post(sim, {}, path="/v2/account", method="POST")
    assert status == 405
    status, body = await post(sim, {}, path="/v2/orders/not-an-id", method="GET")
    assert status == 404 and body["message"] == "order not found"


async def test_order_list_time_window(sim: Simulator) -> None:
    c = trading(sim)
    first = await c.submit(MarketOrderRequest(symbol="SPY", qty=1, side=OrderSide.BUY,
                                              time_in_force=TimeInForce.DAY))
    second = await c.submit(MarketOrderRequest(symbol="SPY", qty=1, side=OrderSide.SELL,
                                               time_in_force=TimeInForce.DAY))
    after_first = await c.orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                                  after=first.submitted_at))
    assert [o.id for o in after_first] == [second.id]
    until_second = await c.orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                                   until=second.submitted_at))
    assert [o.id for o in until_second] == [first.id]
    sells = await c.orders(GetOrdersRequest(status=QueryOrderStatus.ALL, side=OrderSide.SELL))
    assert [o.id for o in sells] == [second.id]
    future = datetime.now(UTC) + timedelta(days=1)
    assert await c.orders(GetOrdersRequest(status=QueryOrderStatus.ALL, after=future)) == []


@pytest.mark.integration
async def test_lifecycle_timer_loopback_and_idempotent_stop() -> None:
    sim = Simulator(SimConfig(seed=1, market_step_s=0.01))
    with pytest.raises(RuntimeError):
        _ = sim.rest_url
    with pytest.raises(ValueError, match="loopback"):
        await sim.start(host="0.0.0.0")
    await sim.start()
    try:
        assert sim.rest_url.startswith("http://127.0.0.1:") and sim.data_url == sim.rest_url
        assert sim.stream_url == sim.rest_url.replace("http", "ws") + "/stream"
        await eventually(lambda: sim.market.steps >= 3, "the timer moving the market",
                         timeout_s=10)
    finally:
        await sim.stop()
    await sim.stop()
    with pytest.raises(ValueError, match="fill_lot"):
        SimConfig(fill_lot=0)
    with pytest.raises(ValueError, match="clock mode"):
        SimConfig(clock="lunch")


async def test_bad_configuration_is_named(tmp_path: Any) -> None:
    dup = SimAccountSpec("b", "PASIM9", "PKSIMSAME", "s2", Decimal(5))
    same = SimAccountSpec("a", "PASIM8", "PKSIMSAME", "s1", Decimal(5))
    with pytest.raises(ValueError, match="distinct key ids"):
        Simulator(SimConfig(accounts=[same, dup]))
    with pytest.raises(ValueError, match="directory does not exist"):
        Simulator(SimConfig(state_path=tmp_path / "missing" / "state.json"))


@pytest.mark.integration
def test_simulator_never_imports_alpaca() -> None:
    code = (
        "import sys, ops.sim, ops.commands.sim, ops.sim.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alpaca'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
