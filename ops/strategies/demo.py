"""The demo strategy: small, deterministic round trips so the demo visibly trades.

`generate(ctx)` proposes at most two signals per (slot, account):
- one stock signal on a symbol from `params["symbols"]`: on a "sell" slot, if any of
  those symbols is held long, sell the whole of one of them (positions close); otherwise
  buy a small amount of one (positions open). Size: 40 % of risk.max_order_notional,
  as whole shares when at least one fits within max_qty, else as a notional (fractional)
  order, so `tiny` (100 per order) and `large` (5,000) both trade within their limits;
- on accounts with risk.allow_options, on one slot in four: close a held option of
  those underlyings, or buy one contract of a call near the money expiring about 30 days
  out (the Friday on or after), so option positions appear too. Option orders are
  marketable limits (10 % through the last price; for a buy, whose option price the
  context does not carry, through a bound taken from the underlying), which also gives
  the dispatcher a price to value them by.

Every choice is a function of (slot time, account, positions, prices) only: a re-run of
the same slot proposes the same signals. Params: `symbols` (list of tickers, required),
`fraction` (share of max_order_notional per entry, default 0.4), `option_every` (slots per
option action, default 4; 0 turns options off).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal

from ops.core.models import OPTION_MULTIPLIER, OptionSymbol, OrderType, Side
from ops.strategies.base import ProposedSignal, StrategyContext, StrategyError

NEW_YORK_FRIDAY = 4  # date.weekday() of Friday
_CENT = Decimal("0.01")
_TICK = Decimal("0.05")


def _digest(*parts: object) -> int:
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _symbols(ctx: StrategyContext) -> list[str]:
    raw = ctx.params.get("symbols")
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise StrategyError(f"demo strategy {ctx.strategy!r}: params.symbols must be a "
                            f"non-empty list of tickers, got {raw!r}")
    return list(raw)


def _param_number(ctx: StrategyContext, name: str, default: float) -> float:
    value = ctx.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise StrategyError(f"demo strategy {ctx.strategy!r}: params.{name} must be a "
                            f"number >= 0, got {value!r}")
    return float(value)


def option_expiry(day: date) -> date:
    """About 30 days out, moved to the Friday on or after."""
    target = day + timedelta(days=30)
    return target + timedelta(days=(NEW_YORK_FRIDAY - target.weekday()) % 7)


def demo_option(underlying: str, price: Decimal, day: date) -> str:
    """A call near the money: strike rounded to 5 (1 below 25), ~30 days out."""
    step = Decimal(5) if price >= 25 else Decimal(1)
    strike = max(step, (price / step).to_integral_value() * step)
    return str(OptionSymbol(underlying, option_expiry(day), "C", strike))


def _entry(ctx: StrategyContext, symbol: str, price: Decimal, fraction: Decimal
           ) -> ProposedSignal | None:
    budget = (ctx.limits.max_order_notional * fraction).quantize(_CENT, ROUND_DOWN)
    if budget <= 0:
        return None
    shares = min((budget / price).to_integral_value(ROUND_DOWN), ctx.limits.max_qty)
    if shares >= 1:
        return ProposedSignal(symbol, Side.BUY, qty=shares)
    return ProposedSignal(symbol, Side.BUY, notional=budget)


def _stock_signal(ctx: StrategyContext, symbols: Sequence[str], h: int) -> ProposedSignal | None:
    held = sorted(s for s in symbols if s in ctx.positions and ctx.positions[s].qty > 0)
    sell_slot = h % 2 == 1
    if held and (sell_slot or len(held) >= ctx.limits.max_open_positions):
        symbol = held[(h >> 8) % len(held)]
        qty = ctx.positions[symbol].qty
        return ProposedSignal(symbol, Side.SELL, qty=min(qty, ctx.limits.max_qty),
                              reduce_only=True)
    priced = [s for s in symbols if ctx.prices.get(s)]
    if not priced:
        return None
    symbol = priced[(h >> 8) % len(priced)]
    fraction = Decimal(str(_param_number(ctx, "fraction", 0.4)))
    return _entry(ctx, symbol, ctx.prices[symbol], fraction)


def _option_limit(price: Decimal, side: Side) -> Decimal:
    """A marketable limit (options are not sent as market orders): 10 % through the last
    price, on a 5-cent tick, never below one tick."""
    factor = Decimal("1.1") if side == Side.BUY else Decimal("0.9")
    ticks = (price * factor / _TICK).to_integral_value(
        ROUND_CEILING if side == Side.BUY else ROUND_DOWN)
    return max(ticks, Decimal(1)) * _TICK


def _option_signal(ctx: StrategyContext, symbols: Sequence[str], h: int) -> ProposedSignal | None:
    every = int(_param_number(ctx, "option_every", 4))
    if not ctx.limits.allow_options or every == 0 or (h >> 16) % every != 0:
        return None
    for symbol, pos in sorted(ctx.positions.items()):
        occ = OptionSymbol.parse(symbol)
        if occ is not None and occ.underlying in symbols and pos.qty > 0:
            last = ctx.prices.get(symbol) or pos.current_price
            if not last:
                return ProposedSignal(symbol, Side.SELL, qty=pos.qty, reduce_only=True)
            return ProposedSignal(symbol, Side.SELL, qty=pos.qty, order_type=OrderType.LIMIT,
                                  limit_price=_option_limit(last, Side.SELL), reduce_only=True)
    underlying = symbols[(h >> 24) % len(symbols)]
    spot = ctx.prices.get(underlying)
    if not spot or ctx.limits.max_qty < 1:
        return None
    symbol = demo_option(underlying, spot, ctx.slot_time.date())
    occ = OptionSymbol.parse(symbol)
    assert occ is not None
    # No option quote in the context: bound the premium from the underlying instead
    # (intrinsic value + 5 % of spot is above a ~30-day near-the-money call's price).
    estimate = max(spot - occ.strike, Decimal(0)) + spot * Decimal("0.05")
    limit = _option_limit(estimate, Side.BUY)
    if limit * OPTION_MULTIPLIER > ctx.limits.max_order_notional:
        return None
    return ProposedSignal(symbol, Side.BUY, qty=Decimal(1), order_type=OrderType.LIMIT,
                          limit_price=limit)


def generate(ctx: StrategyContext) -> list[ProposedSignal]:
    """At most one stock and one option signal for this (slot, account)."""
    symbols = _symbols(ctx)
    h = _digest("demo", ctx.strategy, ctx.account, _stamp(ctx.slot_time))
    out = [s for s in (_stock_signal(ctx, symbols, h), _option_signal(ctx, symbols, h)) if s]
    return out


def _stamp(ts: datetime) -> str:
    return ts.strftime("%Y%m%dT%H%M%S.%fZ")
