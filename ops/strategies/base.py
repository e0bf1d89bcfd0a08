"""The strategy interface: `StrategyContext` in, `ProposedSignal`s out; loading; validation.

A strategy is any importable callable `fn(ctx: StrategyContext)` returning an iterable of
`ProposedSignal` (or an awaitable of one). It should be deterministic given its context
(the engine may re-run a slot after a restart; idempotency keys then keep the second run
from inserting anything, which only works if the same slot proposes the same signals).
It must not do I/O of its own: prices and positions come in the context.

`load_strategy("pkg.mod:attr", where)` imports it, with an error naming the config key
(`where`) and the value. `validate_signal` checks one proposal against the account's
hard limits and returns the normalised row the engine inserts, or raises StrategyError
naming the field at fault. The dispatcher still applies every risk gate later; this is
only the engine's "is this a well-formed signal for this account" check.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ops.core.models import OptionSymbol, OrderType, Position, Side
from ops.core.risk import RiskLimits

_TICKER_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ.")
_SIGNAL_ORDER_TYPES = (OrderType.MARKET, OrderType.LIMIT)  # signals have no stop price


class StrategyError(ValueError):
    """A strategy could not be loaded, or proposed an invalid signal."""


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy sees for one (slot, account)."""

    strategy: str  # the configured strategy name
    account: str
    limits: RiskLimits  # the account's risk limits (Decimal money)
    positions: Mapping[str, Position]  # current broker positions by symbol
    prices: Mapping[str, Decimal]  # latest trade price: params["symbols"] + held symbols
    now: datetime
    slot_time: datetime  # the ticker slot this run belongs to (deterministic)
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProposedSignal:
    """One signal a strategy proposes. Exactly one of qty / notional."""

    symbol: str
    side: Side | str
    qty: Decimal | int | None = None
    notional: Decimal | int | None = None
    order_type: OrderType | str = OrderType.MARKET
    limit_price: Decimal | None = None
    ttl_s: float | None = None  # None: the account's risk.signal_ttl_s
    #: An exit: the dispatcher refuses it if, when it is dispatched, it would open, grow or
    #: flip the position (a late exit after a stop closed it must not open a short).
    reduce_only: bool = False


@dataclass(frozen=True, slots=True)
class ValidSignal:
    """A proposal that passed validation, ready for `Store.insert_signal`."""

    symbol: str
    side: Side
    qty: Decimal | None
    notional: Decimal | None
    order_type: OrderType
    limit_price: Decimal | None
    expires_at: datetime
    reduce_only: bool = False


StrategyResult = Iterable[ProposedSignal] | Awaitable[Iterable[ProposedSignal]]
Strategy = Callable[[StrategyContext], StrategyResult]


def load_strategy(spec: str, where: str) -> Strategy:
    """Import `package.module:attr` (attr may be dotted). Errors name `where` and `spec`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StrategyError(f"{where} = {spec!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise StrategyError(f"{where} = {spec!r}: cannot import module {module_name!r} "
                            f"({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # the module itself failed while importing
        raise StrategyError(f"{where} = {spec!r}: importing {module_name!r} failed "
                            f"({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StrategyError(f"{where} = {spec!r}: module {module_name!r} has no "
                                f"attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise StrategyError(f"{where} = {spec!r}: {attr!r} is a {type(obj).__name__}, "
                            "not a callable")
    fn: Strategy = obj
    return fn


def _decimal(name: str, value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise StrategyError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    try:
        d = Decimal(str(value))  # str(): 0.1 becomes 0.1, not the binary float
    except InvalidOperation:
        raise StrategyError(f"{name} must be a number, got {value!r}") from None
    if not d.is_finite() or d <= 0:
        raise StrategyError(f"{name} must be positive and finite, got {value!r}")
    return d


def _check_symbol(symbol: object) -> tuple[str, OptionSymbol | None]:
    if not isinstance(symbol, str) or not symbol:
        raise StrategyError(f"symbol must be a non-empty string, got {symbol!r}")
    option = OptionSymbol.parse(symbol)
    if option is None and not (len(symbol) <= 10 and set(symbol) <= _TICKER_CHARS):
        raise StrategyError(f"symbol {symbol!r} is neither a ticker (A-Z, '.') nor an OCC "
                            "option symbol")
    return symbol, option


def validate_signal(sig: object, ctx: StrategyContext) -> ValidSignal:
    """The normalised signal, or StrategyError saying which field is wrong and why."""
    if not isinstance(sig, ProposedSignal):
        raise StrategyError(f"expected a ProposedSignal, got {type(sig).__name__}")
    symbol, option = _check_symbol(sig.symbol)
    where = f"signal {symbol}"
    try:
        side = Side(sig.side)
    except ValueError:
        raise StrategyError(f"{where}: side must be 'buy' or 'sell', got {sig.side!r}") from None
    try:
        order_type = OrderType(sig.order_type)
    except ValueError:
        order_type = None
    if order_type not in _SIGNAL_ORDER_TYPES:
        raise StrategyError(f"{where}: order_type must be 'market' or 'limit', "
                            f"got {sig.order_type!r}")
    assert order_type is not None
    qty = _decimal(f"{where}: qty", sig.qty)
    notional = _decimal(f"{where}: notional", sig.notional)
    if (qty is None) == (notional is None):
        raise StrategyError(f"{where}: exactly one of qty or notional is needed "
                            f"(got qty={sig.qty!r}, notional={sig.notional!r})")
    limit_price = _decimal(f"{where}: limit_price", sig.limit_price)
    if order_type is OrderType.LIMIT and limit_price is None:
        raise StrategyError(f"{where}: a limit order needs limit_price")
    if order_type is OrderType.MARKET and limit_price is not None:
        raise StrategyError(f"{where}: a market order takes no limit_price "
                            f"(got {sig.limit_price!r})")
    limits = ctx.limits
    if option is not None:
        if not limits.allow_options:
            raise StrategyError(f"{where}: options are not allowed for account "
                                f"{ctx.account} (risk.allow_options = false)")
        if qty is None or qty != qty.to_integral_value():
            raise StrategyError(f"{where}: options need a whole number of contracts as qty")
    if qty is not None and qty > limits.max_qty:
        raise StrategyError(f"{where}: qty {qty} exceeds risk.max_qty {limits.max_qty} of "
                            f"account {ctx.account}")
    if notional is not None and notional > limits.max_order_notional:
        raise StrategyError(f"{where}: notional {notional} exceeds risk.max_order_notional "
                            f"{limits.max_order_notional} of account {ctx.account}")
    if not isinstance(sig.reduce_only, bool):
        raise StrategyError(f"{where}: reduce_only must be True or False, "
                            f"got {sig.reduce_only!r}")
    ttl = limits.signal_ttl_s if sig.ttl_s is None else sig.ttl_s
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise StrategyError(f"{where}: ttl_s must be a positive number of seconds, "
                            f"got {sig.ttl_s!r}")
    return ValidSignal(symbol, side, qty, notional, order_type, limit_price,
                       ctx.now + timedelta(seconds=float(ttl)), sig.reduce_only)
