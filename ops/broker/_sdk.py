"""The trading half of alpaca-py's imports; `_sdk_data` has the market-data half. The rest
of ops.broker imports alpaca-py only through these two files.

alpaca-py 0.44 imports `websockets.legacy` at import time, which warns on websockets >= 14
(alpaca-wire.md 6.8). The warning is filtered here, explicitly and only for this import,
so that `-W error` runs of the project stay clean.

Import cost. alpaca-py's trading modules `import pandas` at the top but use it only in
code we never run (a corporate-announcements validator; DataFrame views of market data).
pandas and numpy are ~0.5 s and ~50 MB per process, and every trading role is its own
process, so until something really uses pandas it is a `_Deferred` placeholder: the first
attribute anyone reads imports the real module. The market-data clients are imported only
when a role first asks for data (`Broker.market`, via `_sdk_data`); their one use of
pandas and numpy is the `.df` view, so they are deferred there too (`stand_ins`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module until one of its attributes is read."""

    def __getattr__(self, name: str) -> Any:
        stand_ins = self.__dict__.get("_stand_ins")
        if stand_ins is not None:
            if name in stand_ins:
                return stand_ins[name]
            if name == "__path__":
                # `from m import x` asks whether m is a package first; answering that
                # would import it. As a plain module, x is read as an attribute.
                raise AttributeError(name)
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self.__dict__["_real"] = importlib.import_module(self.__name__)
        return getattr(real, name)


class _StandIn:
    """What `from <deferred> import <name>` binds inside `stand_ins`: alpaca-py uses such
    names only in annotations, so merely binding one must not import the module. Calling
    it (or reading an attribute) reaches the real object, importing the module then."""

    def __init__(self, module: str, name: str) -> None:
        self._where = (module, name)

    def _real(self) -> Any:
        module, name = self._where
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real(), attr)

    def __repr__(self) -> str:
        return "<stand-in for {}.{}>".format(*self._where)


@contextlib.contextmanager
def stand_ins(module: str, *names: str) -> Iterator[None]:
    """While inside, `from module import name` on a still-deferred module binds a
    `_StandIn` instead of importing it. Outside, the same import gets the real object."""
    placeholder = sys.modules.get(module)
    if not isinstance(placeholder, _Deferred) or "_real" in placeholder.__dict__:
        yield  # already imported for real: nothing to save
        return
    placeholder.__dict__["_stand_ins"] = {n: _StandIn(module, n) for n in names}
    try:
        yield
    finally:
        del placeholder.__dict__["_stand_ins"]


def defer(name: str) -> None:
    """Put a `_Deferred` placeholder for module `name` in `sys.modules` (if not imported)."""
    spec = None if name in sys.modules else importlib.util.find_spec(name)
    if spec is not None:
        placeholder = _Deferred(name)
        # Tools that scan sys.modules (inspect.getmodule, which pydantic calls for every
        # model) read __file__: answer it without importing.
        placeholder.__file__ = spec.origin
        sys.modules[name] = placeholder


@contextlib.contextmanager
def alpaca_imports() -> Iterator[None]:
    """Around alpaca-py imports: its `websockets.legacy` deprecation warning filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="websockets.legacy is deprecated", category=DeprecationWarning
        )
        yield


defer("pandas")

with alpaca_imports():
    from alpaca.common.enums import Sort
    from alpaca.common.exceptions import APIError
    from alpaca.common.rest import RESTClient
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
    "GetOrderByIdRequest",
    "GetOrdersRequest",
    "LimitOrderRequest",
    "MarketOrderRequest",
    "OrderSide",
    "OrderType",
    "PositionIntent",
    "QueryOrderStatus",
    "RESTClient",
    "ReplaceOrderRequest",
    "SdkOrderRequest",
    "Sort",
    "StopLimitOrderRequest",
    "StopOrderRequest",
    "TimeInForce",
    "TradingClient",
    "TradingStream",
]
