"""The market-data half of alpaca-py's imports (see `_sdk`); imported on first use of
`Broker.market`.

alpaca-py's data models import numpy and pandas at the top, and bind pandas' `DataFrame`
for one annotation (the `.df` view, which we never use): numpy stays deferred like pandas,
and `DataFrame` is a stand-in while these modules load (~50 MB less per process that
reads market data). Real use of `.df` still works: it imports both then.
"""

from __future__ import annotations

from ops.broker._sdk import alpaca_imports, defer, stand_ins  # _sdk defers pandas first

defer("numpy")

with alpaca_imports(), stand_ins("pandas", "DataFrame"):
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
