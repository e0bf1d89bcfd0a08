"""The market-data half of alpaca-py's imports (see `_sdk`); imported on first use of
`Broker.market`, since these modules load pandas."""

from __future__ import annotations

from ops.broker._sdk import alpaca_imports  # its import-time set-up (pandas) comes first

with alpaca_imports():
    from alpaca.data.enums import DataFeed
    from alpaca.data.historical.option import OptionHistoricalDataClient
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.requests import (
        OptionBarsRequest,
        OptionLatestQuoteRequest,
        OptionLatestTradeRequest,
        StockBarsRequest,
        StockLatestQuoteRequest,
        StockLatestTradeRequest,
    )
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

__all__ = [
    "DataFeed",
    "OptionBarsRequest",
    "OptionHistoricalDataClient",
    "OptionLatestQuoteRequest",
    "OptionLatestTradeRequest",
    "StockBarsRequest",
    "StockHistoricalDataClient",
    "StockLatestQuoteRequest",
    "StockLatestTradeRequest",
    "TimeFrame",
    "TimeFrameUnit",
]
