"""Account arithmetic: positions after a fill, market values, equity and buying power.

Pure functions over `AccountState` and the `Market`; the engine calls them to apply fills
and to answer /v2/account and /v2/positions. Model (simple, documented, predictable):
equity = cash + long market value + short market value (negative); margin accounts
(shorting enabled) get multiplier 2, others 1;
buying_power = m * (equity - option exposure - option reservations) - stock exposure
- stock reservations; options_buying_power = equity - stock exposure / m - option exposure
- reservations. Options count x100 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ops.models import OPTION_MULTIPLIER
from ops.sim.accounts import AccountState, OrderState, PositionState
from ops.sim.market import Market
from ops.sim.wire import CENT, dec, iso_z

RATIO = Decimal("0.0001")
PRICE_Q = Decimal("0.000001")


def multiplier_of(asset_class: str) -> Decimal:
    return OPTION_MULTIPLIER if asset_class == "us_option" else Decimal(1)


def exchange_of(symbol: str, asset_class: str) -> str:
    if asset_class == "us_option":
        return ""
    return "ARCA" if symbol in ("SPY", "IWM") else "NASDAQ"


def apply_fill(st: AccountState, order: OrderState, qty: Decimal, price: Decimal) -> Decimal:
    """Move cash and the position for one execution; returns the signed position after it."""
    mult = multiplier_of(order.asset_class)
    signed = qty if order.side == "buy" else -qty
    pos = st.positions.get(order.symbol)
    old = pos.qty if pos else Decimal(0)
    new = old + signed
    if pos is None or old == 0 or (old > 0) == (signed > 0):
        avg = ((abs(old) * (pos.avg_entry_price if pos else Decimal(0))) + qty * price) / abs(new)
    elif abs(signed) <= abs(old):
        avg = pos.avg_entry_price
    else:  # the fill flips the position: the remainder opens at the fill price
        avg = price
    st.cash -= signed * price * mult
    if new == 0:
        st.positions.pop(order.symbol, None)
    else:
        st.positions[order.symbol] = PositionState(
            order.symbol, order.asset_class, order.asset_id, new, avg.quantize(PRICE_Q).normalize()
        )
    return new


def held_for_orders(
    st: AccountState, symbol: str, side: str, exclude: str | None = None
) -> Decimal:
    return sum(
        (o.remaining for o in st.orders.values()
         if o.is_open and o.symbol == symbol and o.side == side and o.id != exclude),
        Decimal(0),
    )


@dataclass(frozen=True, slots=True)
class Totals:
    cash: Decimal
    long_mv: Decimal
    short_mv: Decimal
    equity: Decimal
    stock_exposure: Decimal
    option_exposure: Decimal
    multiplier: Decimal
    buying_power: Decimal
    options_buying_power: Decimal


def reservation(st: AccountState, market: Market, order: OrderState) -> Decimal:
    """Cash an open order could consume: buys, and sells beyond the long position."""
    if order.notional is not None:
        return order.notional
    ref = order.limit_price or market.quote(order.symbol).ask
    mult = multiplier_of(order.asset_class)
    if order.side == "buy":
        pos = st.positions.get(order.symbol)
        covering = max(Decimal(0), -(pos.qty if pos else Decimal(0)))
        return max(Decimal(0), order.remaining - covering) * ref * mult
    pos = st.positions.get(order.symbol)
    long_qty = max(Decimal(0), pos.qty if pos else Decimal(0))
    return max(Decimal(0), order.remaining - long_qty) * ref * mult


def totals(st: AccountState, market: Market, exclude: str | None = None) -> Totals:
    long_mv = short_mv = stock_exp = option_exp = Decimal(0)
    for pos in st.positions.values():
        mv = pos.qty * market.price(pos.symbol) * multiplier_of(pos.asset_class)
        if mv >= 0:
            long_mv += mv
        else:
            short_mv += mv
        if pos.asset_class == "us_option":
            option_exp += abs(mv)
        else:
            stock_exp += abs(mv)
    res_stock = res_option = Decimal(0)
    for o in st.orders.values():
        if o.is_open and o.id != exclude:
            r = reservation(st, market, o)
            if o.asset_class == "us_option":
                res_option += r
            else:
                res_stock += r
    equity = st.cash + long_mv + short_mv
    m = Decimal(2) if st.spec.shorting_enabled else Decimal(1)
    bp = m * (equity - option_exp - res_option) - stock_exp - res_stock
    obp = equity - stock_exp / m - option_exp - res_option - res_stock / m
    return Totals(
        st.cash, long_mv, short_mv, equity, stock_exp, option_exp, m,
        max(Decimal(0), bp), max(Decimal(0), obp),
    )


def money(value: Decimal) -> str:
    return dec(value.quantize(CENT, rounding=ROUND_HALF_UP))


def account_wire(st: AccountState, market: Market) -> dict[str, Any]:
    t = totals(st, market)
    maint = (t.stock_exposure * Decimal("0.3") + t.option_exposure)
    return {
        "id": st.id,
        "account_number": st.spec.account_number,
        "status": "ACTIVE",
        "crypto_status": "ACTIVE",
        "currency": "USD",
        "cash": money(t.cash),
        "equity": money(t.equity),
        "last_equity": money(st.last_equity),
        "portfolio_value": money(t.equity),
        "buying_power": money(t.buying_power),
        "regt_buying_power": money(t.buying_power),
        "non_marginable_buying_power": money(t.options_buying_power),
        "options_buying_power": money(t.options_buying_power),
        "long_market_value": money(t.long_mv),
        "short_market_value": money(t.short_mv),
        "initial_margin": money(t.stock_exposure / 2 + t.option_exposure),
        "maintenance_margin": money(maint),
        "last_maintenance_margin": "0",
        "sma": "0",
        "multiplier": dec(t.multiplier),
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "shorting_enabled": st.spec.shorting_enabled,
        "options_approved_level": st.spec.options_trading_level,
        "options_trading_level": st.spec.options_trading_level,
        "created_at": iso_z(st.created_at) if st.created_at else None,
    }


def position_wire(st: AccountState, market: Market, pos: PositionState) -> dict[str, Any]:
    mult = multiplier_of(pos.asset_class)
    current = market.price(pos.symbol)
    lastday = market.lastday_price(pos.symbol)
    market_value = pos.qty * current * mult
    cost_basis = pos.qty * pos.avg_entry_price * mult
    upl = market_value - cost_basis
    intraday = (current - lastday) * pos.qty * mult
    closing_side = "sell" if pos.qty > 0 else "buy"
    held = held_for_orders(st, pos.symbol, closing_side)
    available = max(Decimal(0), abs(pos.qty) - held) * (1 if pos.qty > 0 else -1)

    def ratio(num: Decimal, den: Decimal) -> str:
        return dec((num / den).quantize(RATIO)) if den != 0 else "0"

    return {
        "asset_id": pos.asset_id,
        "symbol": pos.symbol,
        "exchange": exchange_of(pos.symbol, pos.asset_class),
        "asset_class": pos.asset_class,
        "asset_marginable": pos.asset_class == "us_equity",
        "avg_entry_price": dec(pos.avg_entry_price),
        "qty": dec(pos.qty),
        "qty_available": dec(available),
        "side": "long" if pos.qty > 0 else "short",
        "market_value": money(market_value),
        "cost_basis": money(cost_basis),
        "unrealized_pl": money(upl),
        "unrealized_plpc": ratio(upl, abs(cost_basis)),
        "unrealized_intraday_pl": money(intraday),
        "unrealized_intraday_plpc": ratio(intraday, abs(lastday * pos.qty * mult)),
        "current_price": dec(current),
        "lastday_price": dec(lastday),
        "change_today": ratio(current - lastday, lastday),
    }
