"""Market data on the simulator's origin via the real alpaca-py historical data clients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.models import BarSet, Snapshot
from alpaca.data.requests import (
    OptionLatestQuoteRequest,
    OptionLatestTradeRequest,
    StockBarsRequest,
    StockLatestBarRequest,
    StockLatestQuoteRequest,
    StockLatestTradeRequest,
    StockSnapshotRequest,
)
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.enums import ContractType
from alpaca.trading.models import OptionContract, OptionContractsResponse
from alpaca.trading.requests import GetOptionContractsRequest

from ops.sim import SimConfig, Simulator

from .conftest import options, stocks, trading


def occ(days: int = 20) -> str:
    return f"SPY{datetime.now(UTC) + timedelta(days=days):%y%m%d}P00500000"


async def test_latest_quote_trade_bar(sim: Simulator) -> None:
    d = stocks(sim)
    sim.market.set_price("AAPL", Decimal("190.00"))
    quotes = await asyncio.to_thread(d.get_stock_latest_quote,
                                     StockLatestQuoteRequest(symbol_or_symbols=["AAPL", "SPY"]))
    assert isinstance(quotes, dict) and set(quotes) == {"AAPL", "SPY"}
    q = quotes["AAPL"]
    assert q.bid_price < 190 < q.ask_price
    trades = await asyncio.to_thread(d.get_stock_latest_trade,
                                     StockLatestTradeRequest(symbol_or_symbols="AAPL"))
    assert isinstance(trades, dict) and trades["AAPL"].price == 190.0
    bars = await asyncio.to_thread(d.get_stock_latest_bar,
                                   StockLatestBarRequest(symbol_or_symbols="AAPL"))
    assert isinstance(bars, dict)
    bar = bars["AAPL"]
    assert bar.close == 190.0 and bar.trade_count and bar.vwap
    assert bar.low <= min(bar.open, bar.close) and bar.high >= max(bar.open, bar.close)


@pytest.mark.integration
async def test_prices_walk_deterministically_per_seed() -> None:
    paths = []
    for _ in range(2):
        async with Simulator(SimConfig(seed=11, market_step_s=None)) as s:
            s.market.price("ZETA")  # an on-demand symbol must not disturb the others
            for _ in range(20):
                s.market.step()
            paths.append((s.market.price("AAPL"), s.market.price("ZETA")))
    assert paths[0] == paths[1]
    assert paths[0][0] != Decimal("190.00")


async def test_bars_paging_and_empty(sim: Simulator) -> None:
    d = stocks(sim)
    start = datetime.now(UTC) - timedelta(hours=5)
    req = StockBarsRequest(symbol_or_symbols=["AAPL", "MSFT"],
                           timeframe=TimeFrame(5, TimeFrameUnit.Minute), start=start)
    barset = await asyncio.to_thread(d.get_stock_bars, req)
    assert isinstance(barset, BarSet)
    aapl = barset.data["AAPL"]
    assert 58 <= len(aapl) <= 61 and len(barset.data["MSFT"]) == len(aapl)
    assert [b.timestamp for b in aapl] == sorted(b.timestamp for b in aapl)
    assert all(b.trade_count and b.vwap for b in aapl)
    # alpaca-py follows next_page_token: a small page size yields the same bars.
    paged = await asyncio.to_thread(d.get_stock_bars, StockBarsRequest(
        symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame(5, TimeFrameUnit.Minute),
        start=start, limit=len(aapl) * 2))
    assert isinstance(paged, BarSet) and paged.data["AAPL"] == aapl
    spec = sim.account("large")
    headers = {"APCA-API-KEY-ID": spec.key_id, "APCA-API-SECRET-KEY": spec.secret}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(sim.data_url + "/v2/stocks/bars", params={
            "symbols": "AAPL", "timeframe": "1Min", "start": start.isoformat(), "limit": "7",
        }) as resp:
            body = await resp.json()
        assert len(body["bars"]["AAPL"]) == 7 and body["next_page_token"]
        future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        async with s.get(sim.data_url + "/v2/stocks/bars", params={
            "symbols": "AAPL", "timeframe": "1Day", "start": future,
        }) as resp:
            assert await resp.json() == {"bars": {}, "next_page_token": None}
        async with s.get(sim.data_url + "/v2/stocks/quotes/latest",
                         params={"symbols": "NOT-A-SYMBOL"}) as resp:
            assert resp.status == 400 and "invalid symbol" in (await resp.json())["message"]


async def test_option_quotes_and_trades(sim: Simulator) -> None:
    o = options(sim)
    symbol = occ()
    quotes = await asyncio.to_thread(o.get_option_latest_quote,
                                     OptionLatestQuoteRequest(symbol_or_symbols=symbol))
    assert isinstance(quotes, dict)
    q = quotes[symbol]
    assert 0 < q.bid_price < q.ask_price
    trades = await asyncio.to_thread(o.get_option_latest_trade,
                                     OptionLatestTradeRequest(symbol_or_symbols=[symbol]))
    assert isinstance(trades, dict)
    assert q.bid_price <= trades[symbol].price <= q.ask_price
    # A put far in the money is worth at least its intrinsic value.
    sim.market.set_price("SPY", Decimal(450))
    assert sim.market.price(symbol) >= 50
    with pytest.raises(APIError):
        await asyncio.to_thread(o.get_option_latest_quote,
                                OptionLatestQuoteRequest(symbol_or_symbols="AAPL"))


async def test_option_contracts(sim: Simulator) -> None:
    c = trading(sim).client
    sim.market.set_price("AAPL", Decimal("191.20"))
    friday = next(datetime.now(UTC).date() + timedelta(days=i) for i in range(3, 10)
                  if (datetime.now(UTC).date() + timedelta(days=i)).weekday() == 4)
    req = GetOptionContractsRequest(underlying_symbols=["AAPL"], type=ContractType.CALL,
                                    expiration_date=friday, strike_price_gte="180",
                                    strike_price_lte="200", limit=3)
    first = await asyncio.to_thread(c.get_option_contracts, req)
    assert isinstance(first, OptionContractsResponse) and first.option_contracts
    assert len(first.option_contracts) == 3 and first.next_page_token
    rest = await asyncio.to_thread(c.get_option_contracts, GetOptionContractsRequest(
        underlying_symbols=["AAPL"], type=ContractType.CALL, expiration_date=friday,
        strike_price_gte="180", strike_price_lte="200", page_token=first.next_page_token))
    assert isinstance(rest, OptionContractsResponse) and rest.option_contracts
    strikes = [k.strike_price for k in first.option_contracts + rest.option_contracts]
    assert strikes == [180.0, 185.0, 190.0, 195.0, 200.0]
    one = await asyncio.to_thread(c.get_option_contract, first.option_contracts[0].symbol)
    assert isinstance(one, OptionContract) and one.expiration_date == friday
    assert one.underlying_symbol == "AAPL" and one.size == "100"


async def test_prices_rest_while_the_market_is_closed(sim: Simulator) -> None:
    sim.faults.set_clock("closed")
    before = sim.market.price("NVDA")
    for _ in range(5):
        sim.market.step()
    assert sim.market.price("NVDA") == before
    sim.faults.set_clock("open")
    for _ in range(5):
        sim.market.step()
    assert sim.market.price("NVDA") != before


async def test_stock_snapshots(sim: Simulator) -> None:
    sim.market.set_price("TSLA", Decimal("222.22"))
    snaps = await asyncio.to_thread(stocks(sim).get_stock_snapshot,
                                    StockSnapshotRequest(symbol_or_symbols=["TSLA", "AMD"]))
    assert isinstance(snaps, dict) and set(snaps) == {"TSLA", "AMD"}
    tsla = snaps["TSLA"]
    assert isinstance(tsla, Snapshot)
    assert tsla.latest_trade is not None and tsla.latest_trade.price == 222.22
    assert tsla.latest_quote is not None and tsla.latest_quote.bid_price < 222.22
    assert tsla.daily_bar is not None and tsla.daily_bar.close == 222.22
    assert tsla.previous_daily_bar is not None and tsla.minute_bar is not None
