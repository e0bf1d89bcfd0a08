"""Position changes without a fill, as Alpaca reports them: orders "placed by hand",
splits, option expiry, exercise and assignment (docs/broker-protocol.md 3.7, 3.7a).

What lives here: the admin actions (reached through `FaultController` and `POST
/_sim/faults`): `external_order`, `split`, `expire_options`, `exercise`, `assign`; and
`process_expiries`, which the engine runs at every market step so a held option that
passes its expiry is settled by itself (never an HTTP 500 from /v2/account or
/v2/positions afterwards). Each event moves positions and cash here (own arithmetic: the
account math of fills lives in ops.sim.ledger, which this module only reads) and appends
the non-trade activities Alpaca documents to the account's activity list, which
/v2/account/activities serves (ops.sim.queries). Nothing here is sent on
`trade_updates`: Alpaca reports these only as activities (3.7a), except the order
updates of orders a split cancels or an expiry ends.

Shapes (Alpaca's "Non-Trade Activities for Option Events" page, where documented):
`{"id": "<ms timestamp>::<uuid>", "activity_type", "date": "YYYY-MM-DD", "net_amount",
"description", "symbol", "qty", "status": "executed"}`, plus `price` on OPTRD. No
`transaction_time`: Alpaca gives non-trade activities a date only.
- OPEXC (you exercised a long option): qty = the change of the contract position
  ("-2"), date = the day; then OPTRD on the underlying: qty = shares bought (+) or sold
  (-), price = strike, net_amount = -qty x strike.
- OPASN (your short option was assigned): qty "+n", then OPTRD as above.
- OPEXP (expired worthless): Alpaca shows no example. Where the docs are silent the
  simulator does the least convenient legal thing: qty is the *count of contracts
  removed*, unsigned ("qty = contracts removed", docs/broker-protocol.md 3.7a), so for a long
  position it has the opposite sign of the change; date = the expiry date.
- SPLIT: no example either: one row per account holding the symbol, qty = the change of
  the share count (signed, like the option rows: "+10" for 10 -> 20, "-10" for 20 -> 10),
  no price and no ratio (a consumer must derive the ratio from the position it held);
  date = the day the split is applied.

Silent-docs choices, each the least convenient legal one: a split cancels every open
order of the symbol (the pipeline must re-place resting stops); fractional shares from a
reverse split are kept (Alpaca holds fractional equity positions), no cash in lieu; options
on a split underlying are not adjusted (not modelled); ITM expiry uses the underlying's
price when the expiry is processed (the "official close"), an ITM long put without the
shares to deliver is not exercised (Alpaca's documented do-not-exercise) and expires; an
ITM long call is exercised even without the cash (Alpaca: "you will be responsible for
depositing funds"); automatic expiry runs after the session close of the expiry day
(clock "nyse"/"closed") or once the date has passed (clock "open", whose session never
closes), and the activities carry the expiry date whenever they are processed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Protocol

from ops.sim import ledger
from ops.sim.accounts import AccountState, OrderState, PositionState
from ops.sim.clock import EASTERN, SESSION_CLOSE, SimClock
from ops.sim.market import Market, is_ticker
from ops.sim.occ import OPTION_MULTIPLIER, OptionSymbol
from ops.sim.wire import dec, stable_uuid

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What corporate actions need of the engine (ops.sim.engine.Engine, which calls
    `process_expiries` every step)."""

    market: Market
    clock: SimClock
    dirty: bool
    states: dict[str, AccountState]

    def activity_time(self) -> datetime: ...

    def submit(self, st: AccountState, body: Mapping[str, Any]) -> OrderState: ...

    def expire_order(self, st: AccountState, order: OrderState) -> None: ...

    def cancel(self, st: AccountState, order_id: str) -> None: ...

#: Every non-trade activity type the simulator emits.
NTA_TYPES = frozenset({"OPEXP", "OPEXC", "OPASN", "OPTRD", "SPLIT"})
QTY_Q = Decimal("0.000000001")  # Alpaca's fractional share precision
_ITM = Decimal("0.01")  # auto-exercise threshold (docs/broker-protocol.md 3.7)


# --- activities ------------------------------------------------------------------------------


def _activity(engine: Engine, st: AccountState, activity_type: str, symbol: str,
              qty: Decimal, day: date, description: str, *,
              price: Decimal | None = None, net_amount: Decimal = Decimal(0)) -> dict[str, Any]:
    ts = engine.activity_time()
    item: dict[str, Any] = {
        # Alpaca's id shape, sortable like the FILL ids (same millisecond clock).
        "id": f"{ts.strftime('%Y%m%d%H%M%S')}{ts.microsecond // 1000:03d}::{uuid.uuid4()}",
        "activity_type": activity_type,
        "date": day.isoformat(),
        "net_amount": ledger.money(net_amount),
        "description": description,
        "symbol": symbol,
        "qty": dec(qty),
        "status": "executed",
    }
    if price is not None:
        item["price"] = dec(price)
    st.activities.append(item)
    engine.dirty = True
    log.info("activity %s %s %s %s (%s)", st.spec.name, activity_type, symbol, dec(qty),
             description)
    return item


def _move(st: AccountState, symbol: str, asset_class: str, signed: Decimal,
          price: Decimal) -> Decimal:
    """Add `signed` units of `symbol` at `price` (no order): cash and the position with its
    average entry price, as a fill would move them. Returns the position after."""
    mult = ledger.multiplier_of(asset_class)
    pos = st.positions.get(symbol)
    old = pos.qty if pos else Decimal(0)
    new = old + signed
    if pos is None or old == 0 or (old > 0) == (signed > 0):
        avg = (abs(old) * (pos.avg_entry_price if pos else Decimal(0))
               + abs(signed) * price) / abs(new)
    elif abs(signed) <= abs(old):
        avg = pos.avg_entry_price
    else:  # flipped through zero: the rest opens at `price`
        avg = price
    st.cash -= signed * price * mult
    if new == 0:
        st.positions.pop(symbol, None)
    else:
        st.positions[symbol] = PositionState(symbol, asset_class, stable_uuid("asset", symbol),
                                             new, avg.quantize(ledger.PRICE_Q).normalize())
    return new


def _reduce_option(st: AccountState, symbol: str, n: Decimal) -> None:
    """Take `n` contracts off the position toward zero (no cash: premium was paid)."""
    pos = st.positions[symbol]
    new = pos.qty - n if pos.qty > 0 else pos.qty + n
    if new == 0:
        st.positions.pop(symbol)
    else:
        pos.qty = new


# --- external orders ---------------------------------------------------------------------------


def external_order(engine: Engine, account: str, symbol: str, qty: Any, side: str = "buy",
                   client_order_id: str | None = None, type: str = "market",
                   limit_price: Any = None) -> dict[str, Any]:
    """An order "placed by hand" (Alpaca's web UI, another tool): the same REST rules and
    fills as any order, with a client_order_id that is not the pipeline's (default: a
    UUID, as Alpaca generates one when none is given; one starting with "ops-" is
    refused, that prefix being the pipeline's own). Fills at once while the market is
    open (up to the fill lot per step). Returns the order."""
    st = _state(engine, account)
    cid = client_order_id or str(uuid.uuid4())
    if cid.startswith("ops-"):
        raise ValueError(f"client_order_id {cid!r} starts with 'ops-', the pipeline's own "
                         "prefix: an external order must not look like a pipeline order")
    body: dict[str, Any] = {"symbol": symbol, "qty": str(qty), "side": side, "type": type,
                            "time_in_force": "day", "client_order_id": cid}
    if limit_price is not None:
        body["limit_price"] = str(limit_price)
    return engine.submit(st, body).wire()


# --- splits ------------------------------------------------------------------------------------


def parse_ratio(ratio: Any) -> Fraction:
    """New shares per old share: 2, "2", "2:1" (forward), 0.5, "1:2" (reverse)."""
    try:
        if isinstance(ratio, str) and ":" in ratio:
            new, old = ratio.split(":", 1)
            r = Fraction(int(new), int(old))
        else:
            r = Fraction(Decimal(str(ratio)))
    except (ValueError, ZeroDivisionError, InvalidOperation):
        raise ValueError(f"invalid split ratio {ratio!r}: give new:old, e.g. '2:1' or "
                         "'1:2'") from None
    if r <= 0 or r == 1:
        raise ValueError(f"invalid split ratio {ratio!r}: must be > 0 and not 1")
    return r


def _scale(x: Decimal, r: Fraction) -> Decimal:
    return x * r.numerator / r.denominator


def split(engine: Engine, symbol: str, ratio: Any) -> dict[str, Any]:
    """A forward (ratio > 1) or reverse (< 1) split of `symbol`, effective now: every
    account's share count x ratio with its cost basis unchanged (average entry / ratio),
    the market's prices re-based (last and previous close / ratio), each holder gets one
    SPLIT activity, and every open order of the symbol is canceled (see the module
    docstring). Returns {account: {"before", "after"}} for the holders."""
    symbol = symbol.upper()
    if not is_ticker(symbol):
        raise ValueError(f"split: {symbol!r} is not a stock symbol")
    r = parse_ratio(ratio)
    engine.market.split(symbol, Decimal(r.numerator) / Decimal(r.denominator))
    day = engine.clock.today()
    out: dict[str, Any] = {}
    for st in engine.states.values():
        for order in [o for o in st.orders.values() if o.symbol == symbol and o.is_open]:
            engine.cancel(st, order.id)
        pos = st.positions.get(symbol)
        if pos is None:
            continue
        before = pos.qty
        after = _scale(before, r).quantize(QTY_Q, rounding=ROUND_DOWN).normalize()
        pos.qty = after
        pos.avg_entry_price = _scale(pos.avg_entry_price, 1 / r).quantize(
            ledger.PRICE_Q).normalize()
        _activity(engine, st, "SPLIT", symbol, after - before, day,
                  f"Stock split {r.numerator}:{r.denominator}")
        out[st.spec.name] = {"before": dec(before), "after": dec(after)}
    engine.dirty = True
    return out


# --- options: exercise, assignment, expiry -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    st: AccountState
    pos: PositionState
    occ: OptionSymbol


def _state(engine: Engine, account: str) -> AccountState:
    st = engine.states.get(account)
    if st is None:
        known = ", ".join(sorted(engine.states))
        raise ValueError(f"unknown simulator account {account!r} (known: {known})")
    return st


def _held_option(engine: Engine, account: str, contract: str) -> _Held:
    st = _state(engine, account)
    contract = contract.upper()
    occ = OptionSymbol.parse(contract)
    pos = st.positions.get(contract)
    if occ is None or pos is None or pos.asset_class != "us_option":
        raise ValueError(f"account {account!r} holds no option position {contract!r}")
    return _Held(st, pos, occ)


def _count(n: Any, held: Decimal) -> Decimal:
    k = abs(held) if n is None else Decimal(str(n))
    if k <= 0 or k != k.to_integral_value() or k > abs(held):
        raise ValueError(f"contracts must be a whole number in 1..{abs(held)}, got {n!r}")
    return k


def _deliver(engine: Engine, h: _Held, k: Decimal, kind: str, day: date) -> None:
    """Contracts k of h exercised (long) or assigned (short): the option row, then the
    paired OPTRD on the underlying at the strike (3.7a)."""
    occ = h.occ
    long = h.pos.qty > 0
    # Shares change hands at the strike: a call's holder buys, a put's holder sells; the
    # assigned writer does the opposite.
    buys = (occ.right == "C") == long
    shares = k * OPTION_MULTIPLIER * (1 if buys else -1)
    symbol = str(occ)
    if kind == "OPEXC":
        _activity(engine, h.st, "OPEXC", symbol, -k, day, "Option Exercise")
    else:
        _activity(engine, h.st, "OPASN", symbol, k, day, "Option Assignment")
    _reduce_option(h.st, symbol, k)
    _move(h.st, occ.underlying, "us_equity", shares, occ.strike)
    _activity(engine, h.st, "OPTRD", occ.underlying, shares, day, "Option Trade",
              price=occ.strike, net_amount=-shares * occ.strike)


def exercise(engine: Engine, account: str, contract: str, qty: Any = None) -> dict[str, Any]:
    """The account exercises `qty` (default all) of its long `contract` now (American
    style): OPEXC, then OPTRD on the underlying at the strike. A put needs the shares
    to deliver (Alpaca's rule for puts)."""
    h = _held_option(engine, account, contract)
    if h.pos.qty <= 0:
        raise ValueError(f"{contract}: only a long option can be exercised (held "
                         f"{dec(h.pos.qty)})")
    k = _count(qty, h.pos.qty)
    if h.occ.right == "P" and _free_shares(h.st, h.occ.underlying) < k * OPTION_MULTIPLIER:
        raise ValueError(f"{contract}: exercising {dec(k)} put(s) needs "
                         f"{dec(k * OPTION_MULTIPLIER)} free shares of {h.occ.underlying}")
    _deliver(engine, h, k, "OPEXC", engine.clock.today())
    return _summary(h.st, str(h.occ))


def assign(engine: Engine, account: str, contract: str, qty: Any = None) -> dict[str, Any]:
    """`qty` (default all) of the account's short `contract` is assigned now: OPASN, then
    OPTRD on the underlying at the strike (a call's writer delivers shares, going short
    if it holds none; a put's writer buys them)."""
    h = _held_option(engine, account, contract)
    if h.pos.qty >= 0:
        raise ValueError(f"{contract}: only a short option can be assigned (held "
                         f"{dec(h.pos.qty)})")
    k = _count(qty, h.pos.qty)
    _deliver(engine, h, k, "OPASN", engine.clock.today())
    return _summary(h.st, str(h.occ))


def _free_shares(st: AccountState, symbol: str) -> Decimal:
    pos = st.positions.get(symbol)
    held = pos.qty if pos else Decimal(0)
    return held - ledger.held_for_orders(st, symbol, "sell")


def _summary(st: AccountState, contract: str) -> dict[str, Any]:
    occ = OptionSymbol.parse(contract)
    under = st.positions.get(occ.underlying) if occ else None
    pos = st.positions.get(contract)
    return {"contract": dec(pos.qty) if pos else "0",
            "underlying": dec(under.qty) if under else "0"}


def _expired(engine: Engine, occ: OptionSymbol, now: datetime) -> bool:
    """Past its expiry close: the date is over, or (a clock with sessions) the expiry
    day's session has closed."""
    local = now.astimezone(EASTERN)
    if occ.expiry < local.date():
        return True
    return (occ.expiry == local.date() and engine.clock.mode != "open"
            and local.time() >= SESSION_CLOSE)


def expire_options(engine: Engine, day: Any = None) -> list[dict[str, Any]]:
    """Settle every held option expiring on or before `day` (default today, New York) as
    at its expiry close, whatever the clock says: ITM by >= $0.01 at the underlying's
    current price -> a long is exercised (OPEXC + OPTRD; a put without the shares to
    deliver is not: it expires), a short is assigned (OPASN + OPTRD); otherwise OPEXP.
    Open orders of those contracts end `expired`. Returns what was done."""
    until = engine.clock.today() if day is None else date.fromisoformat(str(day))
    return _settle(engine, lambda occ: occ.expiry <= until)


def process_expiries(engine: Engine) -> list[dict[str, Any]]:
    """Automatic expiry (called by the engine at every market step): options past their
    expiry close are settled as `expire_options` does."""
    now = engine.clock.now()
    return _settle(engine, lambda occ: _expired(engine, occ, now))


def _settle(engine: Engine, due: Any) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    for st in engine.states.values():
        for order in list(st.orders.values()):
            occ = OptionSymbol.parse(order.symbol) if order.asset_class == "us_option" else None
            if order.is_open and occ is not None and due(occ):
                engine.expire_order(st, order)
        for symbol in sorted(st.positions):
            pos = st.positions.get(symbol)
            occ = OptionSymbol.parse(symbol)
            if pos is None or pos.asset_class != "us_option" or occ is None or not due(occ):
                continue
            h = _Held(st, pos, occ)
            spot = engine.market.price(occ.underlying)
            intrinsic = spot - occ.strike if occ.right == "C" else occ.strike - spot
            k = abs(pos.qty)
            what = "expired"
            if intrinsic >= _ITM and pos.qty < 0:
                _deliver(engine, h, k, "OPASN", occ.expiry)
                what = "assigned"
            elif intrinsic >= _ITM and (occ.right == "C" or _free_shares(
                    st, occ.underlying) >= k * OPTION_MULTIPLIER):
                _deliver(engine, h, k, "OPEXC", occ.expiry)
                what = "exercised"
            else:
                # "qty = contracts removed": the unsigned count (see the module docstring).
                _activity(engine, st, "OPEXP", symbol, k, occ.expiry, "Option Expiry")
                st.positions.pop(symbol)
            done.append({"account": st.spec.name, "contract": symbol, "contracts": dec(k),
                         "outcome": what, "underlying_price": dec(spot)})
    return done


__all__ = ["NTA_TYPES", "assign", "exercise", "expire_options", "external_order",
           "parse_ratio", "process_expiries", "split"]
