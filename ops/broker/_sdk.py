"""The one file in the project that imports alpaca-py; the rest of ops.broker imports from here.

alpaca-py 0.44 imports `websockets.legacy` at import time, which warns on websockets >= 14
(alpaca-wire.md 6.8). The warning is filtered here, explicitly and only for this import,
so that `-W error` runs of the project stay clean.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="websockets.legacy is deprecated", category=DeprecationWarning
    )
    from alpaca.common.enums import Sort
    from alpaca.common.exceptions import APIError
    from alpaca.common.rest import RESTClient
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
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import (
        OrderSide,
        OrderType,
        PositionIntent,
        QueryOrderStatus,
        TimeInForce,
    )
    from alpaca.trading.requests import (
        ClosePositionRequest,
        GetOrderByIdRequest,
        GetOrdersRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        ReplaceOrderRequest,
        StopLimitOrderRequest,
        StopOrderRequest,
    )
    from alpaca.trading.requests import OrderRequest as SdkOrderRequest
    from alpaca.trading.stream import TradingStream

__all__ = [
    "APIError",
    "ClosePositionRequest",
    "DataFeed",
    "GetOrderByIdRequest",
    "GetOrdersRequest",
    "LimitOrderRequest",
    "MarketOrderRequest",
    "OptionBarsRequest",
    "OptionHistoricalDataClient",
    "OptionLatestQuoteRequest",
    "OptionLatestTradeRequest",
    "OrderSide",
    "OrderType",
    "PositionIntent",
    "QueryOrderStatus",
    "RESTClient",
    "ReplaceOrderRequest",
    "SdkOrderRequest",
    "Sort",
    "StockBarsRequest",
    "StockHistoricalDataClient",
    "StockLatestQuoteRequest",
    "StockLatestTradeRequest",
    "StopLimitOrderRequest",
    "StopOrderRequest",
    "TimeFrame",
    "TimeFrameUnit",
    "TimeInForce",
    "TradingClient",
    "TradingStream",
]
