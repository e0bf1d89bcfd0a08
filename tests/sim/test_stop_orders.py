"""Stop orders resting at the simulator as protective stops use them (issue 14.3).

A sell stop fills once the last price falls to or below its stop; a buy stop once it rises
to or above; for equities (gtc, day) and single-leg options (day, gtc: docs/broker-protocol.md
3.7a); a day stop expires at the close; a resting sell holds the shares (a second sell is
refused); replacing moves the stop and keeps one order working.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.requests import MarketOrderRequest, ReplaceOrderRequest, StopOrderRequest

from ops.core.models import OptionSymbol
from ops.sim import Simulator
from ops.sim.clock import EASTERN

from .conftest import trading


def market(symbol: str, qty: int, side: OrderSide = OrderSide.BUY) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY)


def stop(symbol: str, qty: int, price: str, side: OrderSide = OrderSide.SELL,
         tif: TimeInForce = TimeInForce.GTC) -> StopOrderRequest:
    return StopOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif,
                            stop_price=float(price))


def call(days: int = 30, strike: int = 190) -> str:
    expiry = datetime.now(UTC).date() + timedelta(days=days)
    return str(OptionSymbol("AAPL", expiry, "C", Decimal(strike)))


@pytest.mark.parametrize("tif", [TimeInForce.GTC, TimeInForce.DAY])
async def test_sell_stop_rests_then_fills_at_or_below_its_price(
        sim: Simulator, tif: TimeInForce) -> None:
    c = trading(sim)
    sim.market.set_price("NVDA", Decimal(120))
    await c.submit(market("NVDA", 10))
    o = await c.submit(stop("NVDA", 10, "114", tif=tif))
    assert o.status == OrderStatus.NEW
    sim.market.set_price("NVDA", Decimal("114.50"))
    sim.engine.process()
    assert (await c.order(o.id)).status == OrderStatus.NEW  # above the stop: rests
    # The resting sell holds the shares: a second sell is refused.
    with pytest.raises(APIError, match="insufficient qty available"):
        await c.submit(market("NVDA", 1, OrderSide.SELL))
    sim.market.set_price("NVDA", Decimal(114))
    sim.engine.process()
    done = await c.order(o.id)
    assert done.status == OrderStatus.FILLED and done.filled_qty == "10"
    assert [p.symbol for p in await c.positions()] == []


async def test_buy_stop_protects_a_short(sim: Simulator) -> None:
    c = trading(sim)
    sim.market.set_price("TSLA", Decimal(200))
    await c.submit(market("TSLA", 5, OrderSide.SELL))
    o = await c.submit(stop("TSLA", 5, "206", OrderSide.BUY))
    sim.market.set_price("TSLA", Decimal("205.99"))
    sim.engine.process()
    assert (await c.order(o.id)).status == OrderStatus.NEW
    sim.market.set_price("TSLA", Decimal(206))
    sim.engine.process()
    assert (await c.order(o.id)).status == OrderStatus.FILLED
    assert await c.positions() == []


@pytest.mark.parametrize("tif", [TimeInForce.DAY, TimeInForce.GTC])
async def test_single_leg_option_stop_rests_and_fills(sim: Simulator, tif: TimeInForce) -> None:
    c = trading(sim)
    symbol = call()
    sim.market.set_price(symbol, Decimal("4.00"))
    await c.submit(market(symbol, 2))
    o = await c.submit(StopOrderRequest(symbol=symbol, qty=2, side=OrderSide.SELL,
                                        time_in_force=tif, stop_price=3.6,
                                        position_intent="sell_to_close"))
    assert o.status == OrderStatus.NEW and o.time_in_force == tif
    sim.market.set_price(symbol, Decimal("3.65"))
    sim.engine.process()
    assert (await c.order(o.id)).status == OrderStatus.NEW
    sim.market.set_price(symbol, Decimal("3.55"))
    sim.engine.process()
    done = await c.order(o.id)
    assert done.status == OrderStatus.FILLED and done.filled_qty == "2"
    assert await c.positions() == []


def next_monday_et(hour: int, minute: int, days_after: int = 0) -> datetime:
    """A time on a Monday at least a week ahead (New York), `days_after` days later: the
    simulator's clock never goes back before the time it has already handed out."""
    day = datetime.now(EASTERN).date() + timedelta(days=7)
    day += timedelta(days=(7 - day.weekday()) % 7 + days_after)
    return datetime.combine(day, time(hour, minute), EASTERN).astimezone(UTC)


async def test_day_option_stop_expires_at_the_close_gtc_equity_stop_stays(
        sim: Simulator) -> None:
    sim.faults.set_clock("nyse")
    sim.clock.freeze(next_monday_et(15, 0))  # open
    sim.engine.process()
    c = trading(sim)
    expiry = next_monday_et(9, 30, days_after=25).date()
    symbol = str(OptionSymbol("AAPL", expiry, "C", Decimal(190)))
    sim.market.set_price(symbol, Decimal("4.00"))
    await c.submit(market(symbol, 1))
    await c.submit(market("AMD", 3))
    day = await c.submit(stop(symbol, 1, "3", tif=TimeInForce.DAY))
    gtc = await c.submit(stop("AMD", 3, "100"))
    sim.clock.freeze(next_monday_et(16, 5))  # closed
    sim.market.step()
    assert (await c.order(day.id)).status == OrderStatus.EXPIRED
    assert (await c.order(gtc.id)).status == OrderStatus.NEW
    # A day stop sent after the close waits (accepted) for the next session's open.
    again = await c.submit(stop(symbol, 1, "3", tif=TimeInForce.DAY))
    assert again.status == OrderStatus.ACCEPTED
    sim.clock.freeze(next_monday_et(9, 35, days_after=1))  # Tuesday: open
    sim.market.step()
    assert (await c.order(again.id)).status == OrderStatus.NEW


async def test_replacing_a_stop_moves_it_and_keeps_one_working(sim: Simulator) -> None:
    c = trading(sim)
    sim.market.set_price("IWM", Decimal(200))
    await c.submit(market("IWM", 8))
    o = await c.submit(stop("IWM", 8, "190"))
    new = await c.replace(o.id, ReplaceOrderRequest(stop_price=195, client_order_id="s-2"))
    assert new.client_order_id == "s-2" and new.stop_price == "195" and new.qty == "8"
    assert (await c.order(o.id)).status == OrderStatus.REPLACED
    smaller = await c.replace(new.id, ReplaceOrderRequest(qty=5, client_order_id="s-3"))
    assert smaller.qty == "5" and smaller.stop_price == "195"
    sim.market.set_price("IWM", Decimal(194))
    sim.engine.process()
    assert (await c.order(smaller.id)).status == OrderStatus.FILLED
    assert (await c.position("IWM")).qty == "3"
