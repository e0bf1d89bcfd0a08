"""Account arithmetic: positions after a fill, market values, equity and buying power.

Pure functions over `AccountState` and the `Market`; the engine calls them to apply fills
and to answer /v2/account and /v2/positions. Model (simple, documented, predictable):
equity = cash + long market value + short market value (negative); margin accounts
(shorting enabled) get multiplier 2, others 1;
buying_power = m * (equity - option exposure - option reservations) - stock exposure
- stock reservations; options_buying_power = equity - stock exposure / m - option exposure
- reservations. Options count x100 everywhere.

Day trades and pattern-day-trading protection (docs/broker-protocol.md 3.7a):
a day trade is a closing order that closes (some of) a position opened or added to the
same New York date; each such order counts once, partial fills included. Alpaca's
documents do not say how a position closed in several orders counts: the least
convenient reading is taken, every closing order is one day trade. `daytrade_count` is
the number of day trades over the last 5 business days (weekdays, today included).
Protection: an account whose equity OR last_equity is under 25,000 (Alpaca does not say
which it judges by: either refuses) with 3 or more day trades is refused any order that
would be another one, exits included, with 403 40310100. An account that reached 4 is
flagged `pattern_day_trader` for good. Note: Alpaca's changelog of 2026-06-03 deprecates
these fields and removes them on 2026-07-06 (FINRA's intraday margin rule); docs/broker-protocol.md
3.7a still lists them and the refusal. The simulator models the stricter world: the
fields present, the refusals on; the pipeline treats the fields as possibly absent.

Options trading level (docs/broker-protocol.md 3.7, section 5): 0 none, 1 covered calls and
cash-secured puts, 2 + long calls and puts, 3 + spreads (not modelled: no mleg). An
opening order beyond the level is refused with 403 40310000 (the message text is not
confirmed by Alpaca's documents; it names the level). Closing orders are never refused
for the level. Naked calls are refused at every level (Alpaca offers none).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ops.sim.accounts import AccountState, OrderState, PositionState
from ops.sim.market import Market
from ops.sim.occ import OPTION_MULTIPLIER, OptionSymbol
from ops.sim.wire import CENT, ApiError, dec, forbidden, iso_z

RATIO = Decimal("0.0001")
PRICE_Q = Decimal("0.000001")
EASTERN = ZoneInfo("America/New_York")
PDT_EQUITY = Decimal(25_000)
PDT_LIMIT = 3  # day trades in 5 business days allowed under PDT_EQUITY
PDT_CODE = 40310100
PDT_MESSAGE = "trade denied due to pattern day trading protection"


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
    _book_day_trade(st, order, old, signed)
    st.cash -= signed * price * mult
    if new == 0:
        st.positions.pop(order.symbol, None)
    else:
        st.positions[order.symbol] = PositionState(
            order.symbol, order.asset_class, order.asset_id, new, avg.quantize(PRICE_Q).normalize()
        )
    return new


def ny_date(ts: datetime) -> date:
    return ts.astimezone(EASTERN).date()


def _book_day_trade(st: AccountState, order: OrderState, old: Decimal, signed: Decimal) -> None:
    """Day-trade bookkeeping for one execution (module docstring). The engine stamps the
    order's updated_at with the execution time before applying it."""
    today = ny_date(order.updated_at).isoformat()
    sym = order.symbol
    if old != 0 and (old > 0) != (signed > 0):  # closes (some of) the position
        if st.opened_on.get(sym) == today and not any(
                t["order_id"] == order.id for t in st.day_trades):
            st.day_trades.append({"date": today, "symbol": sym, "order_id": order.id})
            if daytrade_count(st, ny_date(order.updated_at)) > PDT_LIMIT:
                st.pattern_day_trader = True
        if abs(signed) > abs(old):  # flips: the rest opens a new position today
            st.opened_on[sym] = today
        elif abs(signed) == abs(old):
            st.opened_on.pop(sym, None)
    else:
        st.opened_on[sym] = today


def window_start(today: date) -> date:
    """The first day of the 5 business days (weekdays) ending today."""
    day, seen = today, 0
    while True:
        if day.weekday() < 5:
            seen += 1
            if seen == 5:
                return day
        day -= timedelta(days=1)


def daytrade_count(st: AccountState, today: date) -> int:
    start = window_start(today)
    return sum(1 for t in st.day_trades if start <= date.fromisoformat(t["date"]) <= today)


def would_day_trade(st: AccountState, symbol: str, side: str, today: date) -> bool:
    """Whether an order on `side` would close (some of) a position opened today."""
    pos = st.positions.get(symbol)
    if pos is None or pos.qty == 0:
        return False
    closes = (pos.qty > 0) == (side == "sell")
    return closes and st.opened_on.get(symbol) == today.isoformat()


def pdt_protected(st: AccountState, market: Market) -> bool:
    """Under 25,000 by equity or by last_equity (the least convenient reading)."""
    return min(totals(st, market).equity, st.last_equity) < PDT_EQUITY


def check_pdt(st: AccountState, market: Market, symbol: str, side: str, today: date) -> None:
    """Raise Alpaca's PDT refusal for an order that would be a 4th day trade in 5
    business days on an account under 25,000 -- entry or exit alike."""
    if (would_day_trade(st, symbol, side, today)
            and daytrade_count(st, today) >= PDT_LIMIT and pdt_protected(st, market)):
        raise ApiError(403, PDT_CODE, PDT_MESSAGE)


def option_intent(st: AccountState, symbol: str, side: str) -> str:
    """The position_intent an option order has against the position (when not given)."""
    pos = st.positions.get(symbol)
    qty = pos.qty if pos is not None else Decimal(0)
    if side == "buy":
        return "buy_to_close" if qty < 0 else "buy_to_open"
    return "sell_to_close" if qty > 0 else "sell_to_open"


def check_option_order(st: AccountState, symbol: str, side: str, qty: Decimal | None,
                       intent: str | None) -> None:
    """The options-level rules (module docstring) for an order on an OCC symbol."""
    occ = OptionSymbol.parse(symbol)
    if occ is None:
        return
    actual = option_intent(st, symbol, side)
    if intent is not None and intent != actual:
        # Alpaca documents no answer for an intent that contradicts the position; the
        # least convenient legal one: refuse it.
        pos = st.positions.get(symbol)
        raise ApiError(422, 42210000, f"position_intent {intent} does not match the "
                       f"position in {symbol} (qty {dec(pos.qty) if pos else '0'})")
    level = st.spec.options_trading_level
    if actual in ("buy_to_close", "sell_to_close"):
        return
    if level < 1:
        raise forbidden("account is not eligible to trade options (options trading level 0)")
    if actual == "buy_to_open" and level < 2:
        raise forbidden(f"account not eligible to trade long options: options trading level "
                        f"{level}, level 2 required")
    if actual == "sell_to_open" and occ.right == "C":
        shares = st.positions.get(occ.underlying)
        held = shares.qty if shares is not None else Decimal(0)
        short_calls = sum((-p.qty for s, p in st.positions.items()
                           if p.qty < 0 and (o := OptionSymbol.parse(s)) is not None
                           and o.underlying == occ.underlying and o.right == "C"),
                          Decimal(0))
        needed = (short_calls + (qty or Decimal(0))) * OPTION_MULTIPLIER
        if held < needed:
            raise forbidden(f"insufficient underlying qty available for covered call "
                            f"(requested: {dec(needed)}, available: {dec(max(held, Decimal(0)))})")


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


def account_wire(st: AccountState, market: Market, today: date | None = None) -> dict[str, Any]:
    """GET /v2/account. `today` dates the rolling day-trade window (default: the
    simulator clock's New York date)."""
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
        "pattern_day_trader": st.pattern_day_trader,
        "daytrade_count": daytrade_count(st, today or market.clock.today()),
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
