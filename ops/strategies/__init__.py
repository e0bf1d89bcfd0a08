"""Pluggable strategies for the signal engine.

A strategy is an importable callable named in config (`[[signal_engine.strategies]]`,
`callable = "package.module:function"`) that takes a `StrategyContext` and returns
`ProposedSignal`s (or an awaitable of them). The interface lives in `ops.strategies.base`;
`ops.strategies.demo` is the bundled demo strategy. Strategies never touch the broker or
the database: the signal engine builds the context, validates what comes back and
inserts the signals.
"""

from ops.strategies.base import (
    ProposedSignal,
    Strategy,
    StrategyContext,
    StrategyError,
    load_strategy,
    validate_signal,
)

__all__ = [
    "ProposedSignal",
    "Strategy",
    "StrategyContext",
    "StrategyError",
    "load_strategy",
    "validate_signal",
]
