"""Risk gates: pure functions of (signal, account state, limits, now) -> allow or refuse.

What lives here: the input types (`SignalIntent`, `AccountState`, `RiskLimits`), the
decision (`RiskDecision`), `evaluate()`, and `signal_client_order_id()` — the dispatcher's
crash safety depends on the same signal always mapping to the same client order id.
What does not: any I/O. The dispatcher loads the state, calls `evaluate`, and records the
decision (with its reason) next to the signal.

Gates run in this fixed order; the first that refuses decides (`RiskDecision.gate`):

  account             the signal is for another account than the state (never trade across)
  reconciled          orders/positions not yet reconciled with the broker since start
  kill_switch         flatten: everything refused (the flattening itself is done elsewhere);
                      halt / reduce-only: only orders that reduce a position without
                      flipping it pass (see below)
  drift               broker/database position drift: entries refused, reductions pass
  expiry              signal older than signal_ttl_s, or past its own expires_at
  market              market closed
  sanity              exactly one of qty/notional, positive and finite, a usable price,
                      qty within max_qty
  options             option symbol while allow_options is false; options need whole
                      contracts given as qty; an option order opens or closes, never both
                      (it carries one position_intent), so one that would go through zero
                      is refused: close first
  reduce_only         a reduce-only signal (an exit: `ops signal add --reduce-only`, a
                      strategy's `ProposedSignal(reduce_only=True)`) that would open, grow
                      or flip the position as it stands now, e.g. a late exit after a stop
                      already closed it: refused, whatever allow_short says
  short               the order would open or grow a short position while allow_short
                      is false
  options_level       option entries against the account's options_trading_level
                      (docs/broker-protocol.md 3.7: 1 covered calls / cash-secured puts, 2 long
                      calls and puts, 3 spreads): buy_to_open needs level 2; sell_to_open
                      needs level 1 and, for a call, the underlying's shares to cover it
                      (Alpaca offers no naked calls at any level: checked even when the
                      level is unknown, i.e. the field absent, which otherwise leaves the
                      level to the broker). Exits never checked.
  pdt                 pattern-day-trading guard (see `pdt_refusal`), entries only
  max_order_notional  } exposure gates, applied to entries only (orders that open,
  max_symbol_notional }   increase or flip a position): an exit must never be blocked by
  max_open_positions  }   the limits meant to stop new risk. Symbol exposure counts the
  buying_power        }   position, open orders in that symbol and this order;
  options_buying_power}   open-positions only counts when the symbol is new. Option
  daily_loss          }   entries are checked against options_buying_power (when the
                          broker reports it, else buying_power): the premium for a long
                          option, the strike x 100 x contracts for a cash-secured put,
                          nothing for a covered call.

Pattern-day-trading guard (`pdt` gate, `pdt_refusal`): FINRA's rule as Alpaca applied it
(docs/broker-protocol.md 3.7a): an account under $25,000 that would make a 4th day trade (a
position opened and closed the same day) within 5 business days is refused with 403
40310100, and the refused order may be an EXIT. So an entry is refused before sending when
all of these hold:
  1. `pdt_guard` is not "off";
  2. the account is under $25,000: equity or last_equity (the broker may judge by either);
  3. the day-trade budget is spent: daytrade_count + the other symbols opened or added
     to today and still held, or with an entry order still working (`opened_today`, each
     may still become a day trade), is at least 3 -- or the broker flags the account a
     pattern day trader;
  4. the entry could only be exited as a day trade: with pdt_guard "strict" any entry;
     with "normal" one the exit rules would close the same session: max_hold_s ends
     before the session's close, or an option that close-before-expiry closes today.
Absent day-trade fields (Alpaca removed them on 2026-07-06, docs/broker-protocol.md 3.1) mean
unknown, and unknown refuses nothing here: the broker's refusal, if any, is then an
incident like any other. Exits are never refused by this gate (an exit that the broker
refuses is retried at the next session open, when it is no longer a day trade:
ops.core.refusals.retry_after).

Halt vs reduce-only: for one order both admit exactly the orders that reduce a position
without flipping it (a flip opens new risk, i.e. is an entry). They differ in what the
other roles do around them (reduce-only also cancels open entry orders) and in the reason
text. Option notional is qty x price x 100 (OCC symbols, `OptionSymbol.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ops.core.models import OPTION_MULTIPLIER, KillSwitch, OptionSymbol, OrderType, Side

if TYPE_CHECKING:  # only for from_config's signature: deciding needs no config machinery
    from ops.core import config

GATES = (
    "account", "reconciled", "kill_switch", "drift", "expiry", "market", "sanity", "options",
    "reduce_only", "short", "options_level", "pdt", "max_order_notional", "max_symbol_notional",
    "max_open_positions", "buying_power", "options_buying_power", "daily_loss",
)
"""Every gate name, in evaluation order."""

_ZERO = Decimal(0)
NEW_YORK = ZoneInfo("America/New_York")
#: Below this equity an account may make at most PDT_LIMIT day trades in 5 business days.
PDT_EQUITY = Decimal(25_000)
PDT_LIMIT = 3


class PdtGuard(StrEnum):
    """How carefully entries are refused near the pattern-day-trading limit (`pdt` gate)."""

    OFF = "off"  # never: the broker's refusal decides
    NORMAL = "normal"  # entries the exit rules would close the same session
    STRICT = "strict"  # every entry (any exit could come the same day)


class PositionIntent(StrEnum):
    """Alpaca's `position_intent` of an option order (docs/broker-protocol.md 3.5)."""

    BUY_TO_OPEN = "buy_to_open"
    BUY_TO_CLOSE = "buy_to_close"
    SELL_TO_OPEN = "sell_to_open"
    SELL_TO_CLOSE = "sell_to_close"


def position_intent(side: Side, current: Decimal) -> PositionIntent:
    """The intent of an order on `side` against the signed position `current`: a buy
    closes a short, a sell closes a long, anything else opens. (An order that would go
    through zero is not one intent: the options gate refuses it.)"""
    if side == Side.BUY:
        return PositionIntent.BUY_TO_CLOSE if current < 0 else PositionIntent.BUY_TO_OPEN
    return PositionIntent.SELL_TO_CLOSE if current > 0 else PositionIntent.SELL_TO_OPEN


class Effect(StrEnum):
    """What an order does to the position in its symbol."""

    OPEN = "open"  # no position before
    INCREASE = "increase"  # same direction, larger
    REDUCE = "reduce"  # same direction, smaller, not zero
    CLOSE = "close"  # exactly to zero
    FLIP = "flip"  # through zero to the other side
    UNKNOWN = "unknown"  # quantity not computable (bad input): treated as an entry

    @property
    def is_exit(self) -> bool:
        return self in (Effect.REDUCE, Effect.CLOSE)


@dataclass(frozen=True, slots=True)
class SignalIntent:
    """A signal as the dispatcher is about to turn it into an order. One of qty/notional."""

    signal_id: int | str
    account: str
    symbol: str
    side: Side
    created_at: datetime
    qty: Decimal | None = None
    notional: Decimal | None = None
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    reference_price: Decimal | None = None  # latest trade/quote, used to value the order
    expires_at: datetime | None = None
    reduce_only: bool = False  # an exit: refused if it would open, grow or flip a position


@dataclass(frozen=True, slots=True)
class PositionSnapshot:
    qty: Decimal  # signed: negative = short
    market_value: Decimal  # signed like qty (options already x100)


@dataclass(frozen=True, slots=True)
class AccountState:
    account: str
    kill_switch: KillSwitch
    market_open: bool
    buying_power: Decimal
    equity: Decimal
    last_equity: Decimal  # equity at the previous close: the daily-loss baseline
    positions: Mapping[str, PositionSnapshot] = field(default_factory=dict)
    open_order_notional: Mapping[str, Decimal] = field(default_factory=dict)
    drift_blocked: bool = False
    reconciled: bool = False
    # Options and day trading (each None when the broker does not report it).
    options_buying_power: Decimal | None = None
    options_trading_level: int | None = None
    pattern_day_trader: bool | None = None
    daytrade_count: int | None = None
    #: Symbols whose exit today would be a day trade: held ones bought (longs) or sold
    #: short (shorts) today, and ones with an entry order working. Only the pdt gate
    #: reads it.
    opened_today: frozenset[str] = frozenset()
    #: When the current (or next) regular session closes; None = unknown.
    session_close: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("buying_power", "equity", "last_equity"):
            _require_finite(f"AccountState.{name}", getattr(self, name))
        if self.options_buying_power is not None:
            _require_finite("AccountState.options_buying_power", self.options_buying_power)
        for name in ("options_trading_level", "daytrade_count"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"AccountState.{name} must be an int >= 0 or None, got {v!r}")
        for sym, p in self.positions.items():
            _require_finite(f"AccountState.positions[{sym!r}].qty", p.qty)
            _require_finite(f"AccountState.positions[{sym!r}].market_value", p.market_value)
        for sym, v in self.open_order_notional.items():
            _require_finite(f"AccountState.open_order_notional[{sym!r}]", v)


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """Same field names as the config's RiskLimits (the dispatcher maps one to the other)."""

    max_order_notional: Decimal
    max_symbol_notional: Decimal
    max_open_positions: int
    daily_loss_limit: Decimal  # money: refuse entries once last_equity - equity >= this
    max_qty: Decimal
    allow_short: bool = False
    allow_options: bool = False
    signal_ttl_s: float = 300.0
    pdt_guard: PdtGuard = PdtGuard.NORMAL
    # The exit rules that can force a same-day exit (the pdt gate's "normal" guard); the
    # same values as the account's `ops.core.config.ExitRules`.
    max_hold_s: float | None = None
    close_options_days_before_expiry: int | None = None
    options_expiry_day_exit: bool = True  # an option is closed on its expiry day

    @classmethod
    def from_config(cls, cfg: config.RiskLimits,
                    exits: config.ExitRules | None = None) -> RiskLimits:
        """From the account's configured `ops.core.config.RiskLimits` (same field names) and,
        for the pdt gate, its `ops.core.config.ExitRules`."""
        return cls(
            max_order_notional=cfg.max_order_notional,
            max_symbol_notional=cfg.max_symbol_notional,
            max_open_positions=cfg.max_open_positions,
            daily_loss_limit=cfg.daily_loss_limit,
            max_qty=cfg.max_qty,
            allow_short=cfg.allow_short,
            allow_options=cfg.allow_options,
            signal_ttl_s=cfg.signal_ttl_s,
            pdt_guard=PdtGuard(cfg.pdt_guard),
            max_hold_s=exits.max_hold_s if exits is not None else None,
            close_options_days_before_expiry=(
                exits.close_options_days_before_expiry if exits is not None else None),
            options_expiry_day_exit=(exits.options_expiry_day_exit_by != "off"
                                     if exits is not None else True),
        )

    def __post_init__(self) -> None:
        for name in ("max_order_notional", "max_symbol_notional", "daily_loss_limit",
                     "max_qty"):
            value = getattr(self, name)
            _require_finite(f"RiskLimits.{name}", value)
            if value < 0:
                raise ValueError(f"RiskLimits.{name} must be >= 0, got {value}")
        if self.max_open_positions < 0:
            raise ValueError(f"RiskLimits.max_open_positions must be >= 0, "
                             f"got {self.max_open_positions}")
        if not self.signal_ttl_s > 0:
            raise ValueError(f"RiskLimits.signal_ttl_s must be > 0, got {self.signal_ttl_s}")
        if self.max_hold_s is not None and not self.max_hold_s > 0:
            raise ValueError(f"RiskLimits.max_hold_s must be > 0 or None, got {self.max_hold_s}")


@dataclass(frozen=True, slots=True)
class RiskDecision:
    allowed: bool
    reason: str
    gate: str  # the refusing gate, or "all" when allowed
    effect: Effect = Effect.UNKNOWN
    notional: Decimal | None = None  # the order's value as the gates saw it
    #: Option orders: the intent to send with the order (docs/broker-protocol.md 3.5); else None.
    position_intent: PositionIntent | None = None


def _require_finite(name: str, value: object) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")


def money(x: Decimal) -> str:
    return f"{x:,.2f}" if x.is_finite() else str(x)


def qty_text(x: Decimal) -> str:
    if not x.is_finite():
        return str(x)
    if x == x.to_integral_value():
        return f"{x.normalize():,f}"
    return f"{x:,.6f}".rstrip("0")  # notional orders give long fractions; 6 places say enough


def _positive(x: Decimal | None) -> bool:
    return x is not None and x.is_finite() and x > 0


def order_price(signal: SignalIntent) -> Decimal | None:
    """The per-unit price that values the order: the limit price when there is one."""
    if signal.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and _positive(
        signal.limit_price
    ):
        return signal.limit_price
    if _positive(signal.reference_price):
        return signal.reference_price
    return signal.limit_price if _positive(signal.limit_price) else None


def order_qty(signal: SignalIntent) -> Decimal | None:
    """Units the order is for (notional orders: notional / price), or None if unknowable."""
    if signal.qty is not None and signal.notional is None:
        return signal.qty if _positive(signal.qty) else None
    if signal.notional is not None and signal.qty is None and _positive(signal.notional):
        price = order_price(signal)
        if price is None or OptionSymbol.parse(signal.symbol) is not None:
            return None
        return signal.notional / price
    return None


def position_effect(current: Decimal, side: Side, qty: Decimal | None) -> Effect:
    """Classify an order of `qty` units on `side` against the signed position `current`."""
    if qty is None or not _positive(qty):
        return Effect.UNKNOWN
    new = current + (qty if side == Side.BUY else -qty)
    if current == 0:
        return Effect.OPEN
    if new == 0:
        return Effect.CLOSE
    if (new > 0) != (current > 0):
        return Effect.FLIP
    return Effect.INCREASE if abs(new) > abs(current) else Effect.REDUCE


def reduces_position(signal: SignalIntent, current: Decimal) -> bool:
    """True when the order only reduces (or closes) the position, never flips it."""
    return position_effect(current, signal.side, order_qty(signal)).is_exit


def evaluate(
    signal: SignalIntent, state: AccountState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    """Run every gate in order (see the module docstring); the first refusal decides."""
    pos = state.positions.get(signal.symbol)
    current = pos.qty if pos is not None else _ZERO
    qty = order_qty(signal)
    effect = position_effect(current, signal.side, qty)
    option = OptionSymbol.parse(signal.symbol)
    mult = OPTION_MULTIPLIER if option is not None else Decimal(1)
    intent = position_intent(signal.side, current) if option is not None else None
    price = order_price(signal)
    notional = qty * price * mult if qty is not None and price is not None else None
    what = (f"{signal.side.value} {qty_text(qty) if qty is not None else '?'} {signal.symbol} "
            f"(position {qty_text(current)}, {effect.value})")

    def refuse(gate: str, reason: str) -> RiskDecision:
        return RiskDecision(False, reason, gate, effect, notional, intent)

    if signal.account != state.account:
        return refuse("account", f"signal is for account {signal.account!r}, "
                                 f"this state is account {state.account!r}")
    if not state.reconciled:
        return refuse("reconciled", "account not reconciled with the broker yet: no orders "
                                    "until orders and positions are reconciled")
    ks = state.kill_switch
    if ks.flattens:
        return refuse("kill_switch", f"kill switch {ks.value}: every order refused ({what})")
    if ks in (KillSwitch.HALT, KillSwitch.REDUCE_ONLY) and not effect.is_exit:
        rule = ("new entries refused" if ks is KillSwitch.HALT
                else "only orders that reduce a position without flipping it")
        return refuse("kill_switch", f"kill switch {ks.value}: {rule}; {what}")
    if state.drift_blocked and not effect.is_exit:
        return refuse("drift", f"position drift between broker and database blocks "
                               f"entries; {what}")

    age = (now - signal.created_at).total_seconds()
    if age > limits.signal_ttl_s:
        return refuse("expiry", f"signal is {age:,.1f}s old, older than signal_ttl_s "
                                f"{limits.signal_ttl_s:,.1f}")
    if signal.expires_at is not None and now >= signal.expires_at:
        return refuse("expiry", f"signal expired at {signal.expires_at.isoformat()} "
                                f"(now {now.isoformat()})")
    if not state.market_open:
        return refuse("market", "market closed")

    bad = _sanity(signal, qty, price, limits)
    if bad is not None:
        return refuse("sanity", bad)

    if option is not None:
        if not limits.allow_options:
            return refuse("options", f"{signal.symbol} is an option ({_describe(option)}); "
                                     "allow_options is false")
        if signal.qty is None or signal.qty != signal.qty.to_integral_value():
            return refuse("options", f"option orders need a whole number of contracts as "
                                     f"qty, got qty={signal.qty}, notional={signal.notional}")
        if effect is Effect.FLIP:
            return refuse("options", f"an option order either opens or closes (one "
                                     f"position_intent); {what} would go through zero: "
                                     "close the position first")

    assert qty is not None and price is not None and notional is not None  # by _sanity
    if signal.reduce_only and not effect.is_exit:
        return refuse("reduce_only", f"reduce-only signal, but the order would not reduce "
                                     f"the position: {what}")
    new = current + (qty if signal.side == Side.BUY else -qty)
    if new < 0 and not effect.is_exit and not limits.allow_short:
        return refuse("short", f"order would leave a short position of {qty_text(new)} "
                               f"{signal.symbol}; allow_short is false")

    if effect.is_exit:
        return RiskDecision(True, f"allowed: {what}, notional {money(notional)}; exits skip "
                                  "the exposure gates", "all", effect, notional, intent)

    if option is not None and intent is not None:
        bad = _options_level(signal.symbol, option, intent, qty, state)
        if bad is not None:
            return refuse("options_level", bad)

    bad = pdt_refusal(signal.symbol, state, limits, now)
    if bad is not None:
        return refuse("pdt", bad)

    if notional > limits.max_order_notional:
        return refuse("max_order_notional", f"order notional {money(notional)} exceeds "
                                            f"max_order_notional "
                                            f"{money(limits.max_order_notional)}")
    open_orders = state.open_order_notional.get(signal.symbol, _ZERO)
    if effect is Effect.INCREASE and pos is not None:
        held = abs(pos.market_value)
        exposure = held + open_orders + notional
        parts = f"position {money(held)} + open orders {money(open_orders)} + this order " \
                f"{money(notional)}"
    else:  # open or flip: what is left afterwards is the new position
        exposure = abs(new) * price * mult + open_orders
        parts = f"resulting position {money(abs(new) * price * mult)} + open orders " \
                f"{money(open_orders)}"
    if exposure > limits.max_symbol_notional:
        return refuse("max_symbol_notional", f"{signal.symbol} exposure {money(exposure)} "
                                             f"({parts}) exceeds max_symbol_notional "
                                             f"{money(limits.max_symbol_notional)}")
    if effect is Effect.OPEN:
        held_count = sum(1 for p in state.positions.values() if p.qty != 0)
        if held_count >= limits.max_open_positions:
            return refuse("max_open_positions", f"{held_count} open positions, "
                                                f"max_open_positions is "
                                                f"{limits.max_open_positions}: no new symbol "
                                                f"{signal.symbol}")
    if option is None:
        if notional > state.buying_power:
            return refuse("buying_power", f"order notional {money(notional)} exceeds buying "
                                          f"power {money(state.buying_power)}")
    else:
        need, what_needs = option_requirement(option, intent, qty, notional)
        power, power_name = ((state.options_buying_power, "options_buying_power")
                             if state.options_buying_power is not None
                             else (state.buying_power, "buying_power (the broker reports no "
                                                       "options_buying_power)"))
        if need > power:
            return refuse("options_buying_power", f"{what_needs} {money(need)} exceeds "
                                                  f"{power_name} {money(power)}")
    loss = state.last_equity - state.equity
    if loss >= limits.daily_loss_limit:
        return refuse("daily_loss", f"daily loss {money(loss)} (equity "
                                    f"{money(state.equity)} vs last_equity "
                                    f"{money(state.last_equity)}) reaches daily_loss_limit "
                                    f"{money(limits.daily_loss_limit)}")
    return RiskDecision(True, f"allowed: {what}, notional {money(notional)}", "all", effect,
                        notional, intent)


def _describe(option: OptionSymbol) -> str:
    # Not OptionSymbol.describe() of old: a strike of 190 printed as "1.9E+2".
    kind = "call" if option.right == "C" else "put"
    return f"{option.underlying} {option.expiry.isoformat()} {qty_text(option.strike)} {kind}"


LEVEL_TEXT = "1 covered calls and cash-secured puts, 2 long calls and puts, 3 spreads"


def _options_level(symbol: str, option: OptionSymbol, intent: PositionIntent, qty: Decimal,
                   state: AccountState) -> str | None:
    """Why the account's options trading level does not allow this opening order."""
    level = state.options_trading_level
    desc = f"{intent.value} {qty_text(qty)} {symbol} ({_describe(option)})"
    if level is None:
        pass  # not reported: the broker decides the level (a naked call never passes)
    elif level < 1:
        return (f"{desc}: options trading is not enabled on the account "
                f"(options_trading_level {level}; levels: {LEVEL_TEXT})")
    elif intent is PositionIntent.BUY_TO_OPEN and level < 2:
        return (f"{desc}: a long call or put needs options_trading_level 2, the account has "
                f"level {level} ({LEVEL_TEXT})")
    if intent is PositionIntent.SELL_TO_OPEN and option.right == "C":
        shares = state.positions.get(option.underlying)
        held = shares.qty if shares is not None else _ZERO
        short_calls = _ZERO
        for sym, p in state.positions.items():
            other = OptionSymbol.parse(sym)
            if (other is not None and other.underlying == option.underlying
                    and other.right == "C" and p.qty < 0):
                short_calls -= p.qty
        needed = (short_calls + qty) * OPTION_MULTIPLIER
        if held < needed:
            return (f"{desc}: an uncovered call (covered calls need {qty_text(needed)} "
                    f"{option.underlying} shares for {qty_text(short_calls + qty)} short "
                    f"call(s), {qty_text(held)} held; no level allows naked calls: "
                    f"{LEVEL_TEXT})")
    return None


def option_requirement(option: OptionSymbol, intent: PositionIntent | None, qty: Decimal,
                       notional: Decimal) -> tuple[Decimal, str]:
    """What an option entry takes from options buying power, and its name: the premium
    of a long option, the strike x 100 x contracts of a cash-secured put, nothing for a
    covered call (its shares cover it)."""
    if intent is PositionIntent.SELL_TO_OPEN:
        if option.right == "P":
            return (option.strike * OPTION_MULTIPLIER * qty,
                    "cash-secured put collateral (strike x 100 x contracts)")
        return _ZERO, "covered call requirement"
    return notional, "option order notional"


def same_day_exit(symbol: str, now: datetime, session_close: datetime | None,
                  limits: RiskLimits) -> str | None:
    """Why the exit rules would close a position in `symbol` opened now before the
    session ends (then its exit is a day trade), or None."""
    if (limits.max_hold_s is not None and session_close is not None
            and now < session_close
            and now + timedelta(seconds=limits.max_hold_s) <= session_close):
        close_ny = session_close.astimezone(NEW_YORK)
        return (f"max_hold_s {limits.max_hold_s:,.0f} ends before the session closes "
                f"({close_ny:%H:%M} New York time)")
    option = OptionSymbol.parse(symbol)
    if option is not None:
        today = now.astimezone(NEW_YORK).date()
        left = (option.expiry - today).days
        days = limits.close_options_days_before_expiry
        if days is not None and left <= days:
            return (f"close_options_days_before_expiry {days} closes it today (expires "
                    f"{option.expiry.isoformat()})")
        if limits.options_expiry_day_exit and left <= 0:
            return (f"it expires today ({option.expiry.isoformat()}) and is closed before "
                    "Alpaca's expiry-day liquidation window")
    return None


def pdt_refusal(symbol: str, state: AccountState, limits: RiskLimits,
                now: datetime) -> str | None:
    """Why an entry in `symbol` is refused by the pattern-day-trading guard (module
    docstring, conditions 1-4), or None. Pure; entries only."""
    if limits.pdt_guard is PdtGuard.OFF:
        return None
    basis = min(state.equity, state.last_equity)
    if basis >= PDT_EQUITY:
        return None
    flagged = state.pattern_day_trader is True
    if state.daytrade_count is None and not flagged:
        return None  # unknown (the field is absent): the broker decides
    pending = sorted(state.opened_today - {symbol})
    used = (state.daytrade_count or 0) + len(pending)
    if used < PDT_LIMIT and not flagged:
        return None
    if limits.pdt_guard is PdtGuard.STRICT:
        why = "pdt_guard is strict (any entry may have to be exited today)"
    else:
        forced = same_day_exit(symbol, now, state.session_close, limits)
        if forced is None:
            return None
        why = forced
    count = ("day-trade count unknown" if state.daytrade_count is None
             else f"{state.daytrade_count} day trade(s) in 5 business days")
    if pending:
        count += f" + {len(pending)} position(s) opened today still held ({', '.join(pending)})"
    flag = "; the broker flags it a pattern day trader" if flagged else ""
    return (f"pattern-day-trading guard: the account is under {money(PDT_EQUITY)} (equity "
            f"{money(state.equity)}, last_equity {money(state.last_equity)}) with {count}, "
            f"limit {PDT_LIMIT}{flag}; this entry could only be exited as a day trade: {why}. "
            "The broker would refuse that 4th day trade, the exit included")


def _sanity(
    signal: SignalIntent, qty: Decimal | None, price: Decimal | None, limits: RiskLimits
) -> str | None:
    """Why the order's numbers are unusable, or None when they are fine."""
    if (signal.qty is None) == (signal.notional is None):
        return (f"order needs exactly one of qty or notional, got qty={signal.qty}, "
                f"notional={signal.notional}")
    given_name, given = ("qty", signal.qty) if signal.qty is not None else \
        ("notional", signal.notional)
    assert given is not None
    if not _positive(given):
        return f"{given_name} {given} is not a positive finite number"
    for name, p in (("limit_price", signal.limit_price),
                    ("reference_price", signal.reference_price)):
        if p is not None and not _positive(p):
            return f"{name} {p} is not a positive finite number"
    if price is None:
        return (f"no usable price to value the order (limit_price={signal.limit_price}, "
                f"reference_price={signal.reference_price})")
    if qty is None:
        return f"cannot turn notional {money(given)} into a quantity for {signal.symbol}"
    if qty > limits.max_qty:
        return f"qty {qty_text(qty)} exceeds max_qty {qty_text(limits.max_qty)}"
    return None


_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_SIGNAL_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


def check_account_name(account: str) -> str:
    """`account` if it can be part of a client order id, else a ValueError naming it."""
    if not isinstance(account, str) or not _ACCOUNT_RE.match(account):
        raise ValueError(f"account name {account!r} unusable in a client order id "
                         "(1-40 of A-Z a-z 0-9 _ . -)")
    return account


def signal_client_order_id(account: str, signal_id: int | str) -> str:
    """The client order id for a signal's order: same (account, signal) -> same id, always.

    Injective: signal ids may not contain "-", so the text after the last "-sig-" is the
    signal id and the text before it the account. At most 4 + 40 + 5 + 64 = 113 chars.
    """
    check_account_name(account)
    sid = str(signal_id)
    if isinstance(signal_id, bool) or not _SIGNAL_RE.match(sid):
        raise ValueError(f"signal id {signal_id!r} unusable in a client order id "
                         "(1-64 of A-Z a-z 0-9 _ .)")
    return f"ops-{account}-sig-{sid}"
