"""alpaca-py's TradingStream for ops/broker/stream.py: the adapter's last use of alpaca-py.

REST and market data no longer go through alpaca-py (transport.py says why), so this
module holds only what the trade stream still imports from it. It goes away with
stream.py's move to its own `trade_updates` client; then no role imports alpaca-py.

alpaca-py 0.44 imports `websockets.legacy` at import time, which warns on websockets >= 14
(alpaca-wire.md 6.8). The warning is filtered here, explicitly and only for this import,
so that `-W error` runs of the project stay clean.

Import cost. `alpaca.trading.stream` loads alpaca-py's trading package, whose request
models `import pandas` at the top but use it only in code we never run (a corporate-
announcements validator). pandas and numpy are ~0.5 s and ~50 MB per process, so while
this import remains pandas is a `_Deferred` placeholder: the first attribute anyone reads
imports the real module.
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
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self.__dict__["_real"] = importlib.import_module(self.__name__)
        return getattr(real, name)


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
    from alpaca.trading.stream import TradingStream

__all__ = ["TradingStream"]
