"""Market data for the Broker: latest quotes and trades, bars; stocks and options.

Plain GETs on the data host (docs/broker-protocol.md 3.8), not alpaca-py's data clients: those
import pandas and numpy (~47 MB per process) for DataFrame views we never use, and offer
no timeout, no retry control and no way to close their session (transport.py). Option
symbols (OCC, see ops.core.models.OptionSymbol) go to /v1beta1/options/..., everything else
to /v2/stocks/...; always the multi-symbol endpoints (`symbols=A,B`). Bars are paged by
`next_page_token`, one request per page, each retried like a read and paced by the
Broker's data budget: every request goes out through the `read` function the Broker
passes in, so this module imports nothing of the Broker.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ops.broker.convert import as_mapping, bar_from_raw, quote_from_raw, trade_price_from_raw
from ops.broker.errors import BrokerDataError
from ops.core.models import Bar, OptionSymbol, Quote

#: (what, url, query) -> the decoded JSON body.
ReadData = Callable[[str, str, Mapping[str, str]], Awaitable[Any]]

_TIMEFRAME = re.compile(r"^(\d+)(Min|Hour|Day|Week|Month)$")
# The amounts the data API takes per unit (as alpaca-py's TimeFrame checks them).
_AMOUNTS: dict[str, Callable[[int], bool]] = {
    "Min": lambda n: 1 <= n <= 59,
    "Hour": lambda n: 1 <= n <= 23,
    "Day": lambda n: n == 1,
    "Week": lambda n: n == 1,
    "Month": lambda n: n in (1, 2, 3, 6, 12),
}
FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")
BARS_PAGE_LIMIT = 10_000  # the API's maximum, what alpaca-py asks for


def parse_timeframe(text: str) -> str:
    """'5Min', '1Hour', '1Day', '1Week', '3Month' (checked) -> the same text."""
    m = _TIMEFRAME.match(text)
    if m is None or not _AMOUNTS[m[2]](int(m[1])):
        raise ValueError(f"timeframe = {text!r}: expected <n>Min (1-59), <n>Hour (1-23), "
                         "1Day, 1Week or <n>Month (1, 2, 3, 6, 12)")
    return f"{int(m[1])}{m[2]}"


def _split(symbols: Iterable[str]) -> tuple[list[str], list[str]]:
    stocks: list[str] = []
    options: list[str] = []
    for s in dict.fromkeys(symbols):
        (options if OptionSymbol.parse(s) is not None else stocks).append(s)
    return stocks, options


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class MarketData:
    """The data half of a Broker (kept separate to keep modules small)."""

    def __init__(self, read: ReadData, data_url: str, feed: str | None) -> None:
        if feed is not None and feed not in FEEDS:
            raise ValueError(f"data_feed = {feed!r}: one of {', '.join(FEEDS)} (or none)")
        self._read = read
        self._stocks = f"{data_url}/v2/stocks"
        self._options = f"{data_url}/v1beta1/options"
        self._feed = {"feed": feed} if feed else {}

    async def _keyed(self, what: str, url: str, params: Mapping[str, str],
                     key: str) -> dict[str, Any]:
        """`body[key]`, the per-symbol object of a data response ({} when null)."""
        body = as_mapping(await self._read(what, url, params), what)
        if key not in body:
            raise BrokerDataError(what, f"response without {key!r} (keys: "
                                  f"{', '.join(sorted(map(str, body))) or 'none'})")
        return dict(as_mapping(body[key] or {}, f"{what} {key!r}"))

    async def _latest(self, kind: str, key: str, symbols: Iterable[str]) -> dict[str, Any]:
        stocks, options = _split(symbols)
        raw: dict[str, Any] = {}
        if stocks:
            raw |= await self._keyed(f"latest stock {key}", f"{self._stocks}/{kind}/latest",
                                     {"symbols": ",".join(stocks), **self._feed}, key)
        if options:
            raw |= await self._keyed(f"latest option {key}", f"{self._options}/{kind}/latest",
                                     {"symbols": ",".join(options)}, key)
        return raw

    async def latest_quotes(self, symbols: Iterable[str]) -> dict[str, Quote]:
        raw = await self._latest("quotes", "quotes", symbols)
        return {sym: quote_from_raw(sym, q) for sym, q in raw.items()}

    async def latest_trades(self, symbols: Iterable[str]) -> dict[str, Decimal]:
        raw = await self._latest("trades", "trades", symbols)
        return {sym: trade_price_from_raw(sym, t) for sym, t in raw.items()}

    async def _bars(self, what: str, url: str, params: dict[str, str]) -> dict[str, list[Any]]:
        """All pages of one bars query, merged per symbol."""
        out: dict[str, list[Any]] = {}
        token: str | None = None
        while True:
            page_params = params if token is None else {**params, "page_token": token}
            body = as_mapping(await self._read(what, url, page_params), what)
            if "bars" not in body:
                raise BrokerDataError(what, "response without 'bars'")
            for sym, bars in as_mapping(body["bars"] or {}, f"{what} 'bars'").items():
                if not isinstance(bars, list):
                    raise BrokerDataError(what, f"bars of {sym}: expected a JSON array, got "
                                          f"{type(bars).__name__}")
                out.setdefault(sym, []).extend(bars)
            nxt = body.get("next_page_token")
            if not nxt or nxt == token:
                return out
            token = str(nxt)

    async def bars(
        self, symbols: Iterable[str], timeframe: str, start: datetime, end: datetime | None
    ) -> dict[str, list[Bar]]:
        if start.tzinfo is None or (end is not None and end.tzinfo is None):
            raise ValueError("bars: start and end must be timezone-aware datetimes")
        base = {"timeframe": parse_timeframe(timeframe), "start": _utc(start),
                "limit": str(BARS_PAGE_LIMIT)}
        if end is not None:
            base["end"] = _utc(end)
        stocks, options = _split(symbols)
        raw: dict[str, list[Any]] = {}
        if stocks:
            raw |= await self._bars("stock bars", f"{self._stocks}/bars",
                                    {"symbols": ",".join(stocks), **base, **self._feed})
        if options:
            raw |= await self._bars("option bars", f"{self._options}/bars",
                                    {"symbols": ",".join(options), **base})
        return {sym: [bar_from_raw(sym, b) for b in bars] for sym, bars in raw.items()}
