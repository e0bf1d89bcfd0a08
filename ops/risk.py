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
                      contracts given as qty
  short               the order would open or grow a short position while allow_short
                      is false
  max_order_notional  } exposure gates, applied to entries only (orders that open,
  max_symbol_notional }   increase or flip a position): an exit must never be blocked by
  max_open_positions  }   the limits meant to stop new risk. Symbol exposure counts the
  buying_power        }   position, open orders in that symbol and this order;
  daily_loss          }   open-positions only counts when the symbol is new.

Halt vs reduce-only: for one order both admit exactly the orders that reduce a position
without flipping it (a flip opens new risk, i.e. is an entry). They differ in what the
other roles do around them (reduce-only also cancels open entry orders) and in the reason
text. Option notional is qty x price x 100 (OCC symbols, `OptionSymbol.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from ops.models import OPTION_MULTIPLIER, KillSwitch, OptionSymbol, OrderType, Side

if TYPE_CHECKING:  # only for from_config's signature: deciding needs no config machinery
    from ops import config

GATES = (
    "account", "reconciled", "kill_switch", "drift", "expiry", "market", "sanity", "options",
    "short", "max_order_notional", "max_symbol_notional", "max_open_positions",
    "buying_power", "daily_loss",
)
"""Every gate name, in evaluation order."""

_ZERO = Decimal(0)


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

    def __post_init__(self) -> None:
        for name in ("buying_power", "equity", "last_equity"):
            _require_finite(f"AccountState.{name}", getattr(self, name))
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

    @classmethod
    def from_config(cls, cfg: config.RiskLimits) -> RiskLimits:
        """From the account's configured `ops.config.RiskLimits` (same field names)."""
        return cls(
            max_order_notional=cfg.max_order_notional,
            max_symbol_notional=cfg.max_symbol_notional,
            max_open_positions=cfg.max_open_positions,
            daily_loss_limit=cfg.daily_loss_limit,
            max_qty=cfg.max_qty,
            allow_short=cfg.allow_short,
            allow_options=cfg.allow_options,
            signal_ttl_s=cfg.signal_ttl_s,
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


@dataclass(frozen=True, slots=True)
class RiskDecision:
    allowed: bool
    reason: str
    gate: str  # the refusing gate, or "all" when allowed
    effect: Effect = Effect.UNKNOWN
    notional: Decimal | None = None  # the order's value as the gates saw it


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
    price = order_price(signal)
    notional = qty * price * mult if qty is not None and price is not None else None
    what = (f"{signal.side.value} {qty_text(qty) if qty is not None else '?'} {signal.symbol} "
            f"(position {qty_text(current)}, {effect.value})")

    def refuse(gate: str, reason: str) -> RiskDecision:
        return RiskDecision(False, reason, gate, effect, notional)

    if signal.account != state.account:
        return refuse("account", f"signal is for account {signal.account!r}, "
                                 f"this state is account {state.account!r}")
    if not state.reconciled:
        return refuse("reconciled", "account not reconciled with the broker yet: no orders "
                                    "until orders and positions are reconciled")
    ks = state.kill_switch
    if ks is KillSwitch.FLATTEN:
        return refuse("kill_switch", f"kill switch flatten: every order refused ({what})")
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
            # Not OptionSymbol.describe(): it prints a strike of 190 as "1.9E+2".
            kind = "call" if option.right == "C" else "put"
            desc = (f"{option.underlying} {option.expiry.isoformat()} "
                    f"{qty_text(option.strike)} {kind}")
            return refuse("options", f"{signal.symbol} is an option ({desc}); "
                                     "allow_options is false")
        if signal.qty is None or signal.qty != signal.qty.to_integral_value():
            return refuse("options", f"option orders need a whole number of contracts as "
                                     f"qty, got qty={signal.qty}, notional={signal.notional}")

    assert qty is not None and price is not None and notional is not None  # by _sanity
    new = current + (qty if signal.side == Side.BUY else -qty)
    if new < 0 and not effect.is_exit and not limits.allow_short:
        return refuse("short", f"order would leave a short position of {qty_text(new)} "
                               f"{signal.symbol}; allow_short is false")

    if effect.is_exit:
        return RiskDecision(True, f"allowed: {what}, notional {money(notional)}; exits skip "
                                  "the exposure gates", "all", effect, notional)

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
    if notional > state.buying_power:
        return refuse("buying_power", f"order notional {money(notional)} exceeds buying "
                                      f"power {money(state.buying_power)}")
    loss = state.last_equity - state.equity
    if loss >= limits.daily_loss_limit:
        return refuse("daily_loss", f"daily loss {money(loss)} (equity "
                                    f"{money(state.equity)} vs last_equity "
                                    f"{money(state.last_equity)}) reaches daily_loss_limit "
                                    f"{money(limits.daily_loss_limit)}")
    return RiskDecision(True, f"allowed: {what}, notional {money(notional)}", "all", effect,
                        notional)


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
