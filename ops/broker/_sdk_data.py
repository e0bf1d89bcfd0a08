"""The market-data half of alpaca-py's imports (see `_sdk`); imported on first use of
`Broker.market`, since these modules load pandas."""

from __future__ import annotations

import warnings

from ops.broker import _sdk  # noqa: F401  (its import-time set-up comes first)

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="websockets.legacy is deprecated", category=DeprecationWarning
    )
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
