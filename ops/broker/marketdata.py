"""Market data for the Broker: latest quotes and trades, bars; stocks and options.

Option symbols (OCC, see ops.models.OptionSymbol) go to the option data client
(/v1beta1/options/...), everything else to the stock client (/v2/stocks/...).
Calls are retried like other reads and paced by the Broker's data budget.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ops.broker import _sdk_data as sdk
from ops.broker.convert import as_mapping, bar_from_raw, quote_from_raw, trade_price_from_raw
from ops.models import Bar, OptionSymbol, Quote

if TYPE_CHECKING:
    from ops.broker.client import Broker

_TIMEFRAME = re.compile(r"^(\d+)(Min|Hour|Day|Week|Month)$")
_UNITS = {
    "Min": sdk.TimeFrameUnit.Minute,
    "Hour": sdk.TimeFrameUnit.Hour,
    "Day": sdk.TimeFrameUnit.Day,
    "Week": sdk.TimeFrameUnit.Week,
    "Month": sdk.TimeFrameUnit.Month,
}


def parse_timeframe(text: str) -> sdk.TimeFrame:
    """'5Min', '1Hour', '1Day', '1Week', '3Month' -> TimeFrame."""
    m = _TIMEFRAME.match(text)
    if m is None:
        raise ValueError(f"timeframe = {text!r}: expected <n>Min, <n>Hour, 1Day, 1Week "
                         "or <n>Month")
    return sdk.TimeFrame(int(m[1]), _UNITS[m[2]])


def _split(symbols: Iterable[str]) -> tuple[list[str], list[str]]:
    stocks: list[str] = []
    options: list[str] = []
    for s in dict.fromkeys(symbols):
        (options if OptionSymbol.parse(s) is not None else stocks).append(s)
    return stocks, options


class MarketData:
    """Data-client half of a Broker (kept separate to keep modules small)."""

    def __init__(
        self,
        broker: Broker,
        stock: sdk.StockHistoricalDataClient,
        option: sdk.OptionHistoricalDataClient,
        feed: str | None,
    ) -> None:
        self._broker = broker
        self._stock = stock
        self._option = option
        self._feed = sdk.DataFeed(feed) if feed else None

    def close(self) -> None:
        self._stock._session.close()
        self._option._session.close()

    async def _get(self, what: str, fn: Callable[..., Any], req: object,
                   bound_s: float | None = None) -> dict[str, Any]:
        read: Callable[..., Awaitable[Any]] = self._broker.read
        raw = await read(what, fn, req, data=True, bound_s=bound_s)
        return dict(as_mapping(raw or {}, what))

    async def latest_quotes(self, symbols: Iterable[str]) -> dict[str, Quote]:
        stocks, options = _split(symbols)
        raw: dict[str, Any] = {}
        if stocks:
            raw |= await self._get("latest stock quotes", self._stock.get_stock_latest_quote,
                                   sdk.StockLatestQuoteRequest(symbol_or_symbols=stocks,
                                                               feed=self._feed))
        if options:
            raw |= await self._get("latest option quotes",
                                   self._option.get_option_latest_quote,
                                   sdk.OptionLatestQuoteRequest(symbol_or_symbols=options))
        return {sym: quote_from_raw(sym, q) for sym, q in raw.items()}

    async def latest_trades(self, symbols: Iterable[str]) -> dict[str, Decimal]:
        stocks, options = _split(symbols)
        raw: dict[str, Any] = {}
        if stocks:
            raw |= await self._get("latest stock trades", self._stock.get_stock_latest_trade,
                                   sdk.StockLatestTradeRequest(symbol_or_symbols=stocks,
                                                               feed=self._feed))
        if options:
            raw |= await self._get("latest option trades",
                                   self._option.get_option_latest_trade,
                                   sdk.OptionLatestTradeRequest(symbol_or_symbols=options))
        return {sym: trade_price_from_raw(sym, t) for sym, t in raw.items()}

    async def bars(
        self, symbols: Iterable[str], timeframe: str, start: datetime, end: datetime | None
    ) -> dict[str, list[Bar]]:
        if start.tzinfo is None or (end is not None and end.tzinfo is None):
            raise ValueError("bars: start and end must be timezone-aware datetimes")
        tf = parse_timeframe(timeframe)
        stocks, options = _split(symbols)
        raw: dict[str, Any] = {}
        # alpaca-py follows next_page_token inside one call: bound the whole call loosely;
        # each HTTP request still has its own timeout.
        bound = 10 * self._broker.settings.rest_timeout_s
        if stocks:
            raw |= await self._get(
                "stock bars", self._stock.get_stock_bars,
                sdk.StockBarsRequest(symbol_or_symbols=stocks, timeframe=tf, start=start,
                                     end=end, feed=self._feed), bound,
            )
        if options:
            raw |= await self._get(
                "option bars", self._option.get_option_bars,
                sdk.OptionBarsRequest(symbol_or_symbols=options, timeframe=tf, start=start,
                                      end=end), bound,
            )
        return {sym: [bar_from_raw(sym, b) for b in (bars or [])] for sym, bars in raw.items()}
