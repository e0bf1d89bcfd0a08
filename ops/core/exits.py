"""Exit rules: pure functions of (position, its tracked state, price, rules, now).

What lives here: `ExitRules`, `PositionState` (entry time and water marks),
`update_water_marks()`, `evaluate_exits()` -> `ExitDecision | None`, and
`exit_client_order_id()`, which maps the same exit decision to the same client order id
after any restart, so an exit order is never sent twice. What does not: fetching prices,
persisting water marks, submitting orders (the position manager does that).

Percentages are percent numbers (5 means 5 %). Rules are checked in this order and the
first that fires decides; every decision closes the whole position:
  option_expiry  option within close_options_days_before_expiry days of its expiry
                 (calendar days, dates in America/New_York)
  option_expiry_day  an option on its expiry day at or after expiry_day_exit_by (New York
                 time, default 15:00), whatever close_options_days_before_expiry says
                 (even unset): Alpaca may liquidate expiring positions from about 15:15
                 ET (docs/broker-protocol.md 3.7), at market and on its own terms; closing first
                 keeps the exit ours. The days rule, when set, fires earlier on its own.
  stop_loss      loss from the average entry price >= stop_loss_pct
  trailing_stop  price has moved against the high-water mark (longs) / low-water mark
                 (shorts) by >= trailing_stop_pct
  take_profit    gain from the average entry price >= take_profit_pct
  max_hold       held for >= max_hold_s
The comparisons are done by multiplication, not division, so they are exact in Decimal.

An option exit carries its `position_intent` (sell_to_close a long, buy_to_close a short),
which the caller sends with the order (docs/broker-protocol.md 3.5).

`flatten_client_order_id` is the kill switch's counterpart (the dispatcher's managed-only
flatten): per (position epoch, attempt), with the `ops-<account>-` prefix, so its fills
count as the pipeline's own (managed reductions, ops.store.ownership).

About `exit_client_order_id` and the rule in it: the id is per (position, rule), so a
rejected or cancelled exit under one rule does not make the position impossible to exit
under another. The caller must therefore not submit a second exit for a position while
one of its exit orders is still open (it looks them up by the `ops-<account>-exit-` prefix).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ops.core.models import OptionSymbol, Position, Side
from ops.core.risk import check_account_name

if TYPE_CHECKING:  # only for from_config's signature: deciding needs no config machinery
    from ops.core import config

NEW_YORK = ZoneInfo("America/New_York")
_HUNDRED = Decimal(100)
#: Alpaca may liquidate expiring option positions from about 15:15 New York time; the
#: default exit time leaves a quarter of an hour for the order to fill.
DEFAULT_EXPIRY_DAY_EXIT_BY = time(15, 0)


class ExitRule(StrEnum):
    OPTION_EXPIRY = "option_expiry"
    OPTION_EXPIRY_DAY = "option_expiry_day"
    STOP_LOSS = "stop_loss"
    TRAILING_STOP = "trailing_stop"
    TAKE_PROFIT = "take_profit"
    MAX_HOLD = "max_hold"


@dataclass(frozen=True, slots=True)
class ExitRules:
    """Which exits apply; None turns a rule off."""

    stop_loss_pct: Decimal | None = None
    take_profit_pct: Decimal | None = None
    trailing_stop_pct: Decimal | None = None
    max_hold_s: float | None = None
    close_options_days_before_expiry: int | None = None
    expiry_day_exit_by: time | None = DEFAULT_EXPIRY_DAY_EXIT_BY  # New York; None: off

    @classmethod
    def from_config(cls, cfg: config.ExitRules) -> ExitRules:
        """From the account's configured `ops.core.config.ExitRules`.

        Config percentages are floats; they become Decimal through their shortest repr
        (5.1 -> Decimal("5.1"), not the binary float's 5.0999...).
        """
        def pct(v: float | None) -> Decimal | None:
            return None if v is None else Decimal(str(v))

        return cls(
            stop_loss_pct=pct(cfg.stop_loss_pct),
            take_profit_pct=pct(cfg.take_profit_pct),
            trailing_stop_pct=pct(cfg.trailing_stop_pct),
            max_hold_s=cfg.max_hold_s,
            close_options_days_before_expiry=cfg.close_options_days_before_expiry,
            expiry_day_exit_by=parse_exit_by(cfg.options_expiry_day_exit_by),
        )

    def __post_init__(self) -> None:
        for name in ("stop_loss_pct", "take_profit_pct", "trailing_stop_pct"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, Decimal) or not v.is_finite() or v <= 0):
                raise ValueError(f"ExitRules.{name} must be a positive finite Decimal "
                                 f"percentage or None, got {v!r}")
        if self.max_hold_s is not None and not self.max_hold_s > 0:
            raise ValueError(f"ExitRules.max_hold_s must be > 0 or None, got {self.max_hold_s}")
        days = self.close_options_days_before_expiry
        if days is not None and (isinstance(days, bool) or not isinstance(days, int)
                                 or days < 0):
            raise ValueError(f"ExitRules.close_options_days_before_expiry must be an int "
                             f">= 0 or None, got {days!r}")
        by = self.expiry_day_exit_by
        if by is not None and (not isinstance(by, time) or by.tzinfo is not None):
            raise ValueError(f"ExitRules.expiry_day_exit_by must be a naive time (New York) "
                             f"or None, got {by!r}")


def parse_exit_by(text: str) -> time | None:
    """"HH:MM" -> time (New York); "off" -> None (the config validated the shape)."""
    if text == "off":
        return None
    hh, mm = text.split(":")
    return time(int(hh), int(mm))


@dataclass(frozen=True, slots=True)
class PositionState:
    """What the position manager tracks per open position, beyond the broker's view."""

    opened_at: datetime
    high_water: Decimal  # highest price seen since opening (longs' trailing stop)
    low_water: Decimal  # lowest price seen since opening (shorts' trailing stop)

    @classmethod
    def opened(cls, opened_at: datetime, entry_price: Decimal) -> PositionState:
        return cls(opened_at, entry_price, entry_price)


@dataclass(frozen=True, slots=True)
class ExitDecision:
    rule: ExitRule
    reason: str
    symbol: str
    side: Side  # the closing side: sell a long, buy back a short
    qty: Decimal  # the whole position, unsigned
    #: Options: "sell_to_close" / "buy_to_close", to send with the order; else None.
    position_intent: str | None = None


def _check_price(price: Decimal) -> None:
    if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
        raise ValueError(f"exit evaluation needs a positive finite price, got {price!r}")


def update_water_marks(state: PositionState, price: Decimal) -> PositionState:
    """The state with `price` folded into the high- and low-water marks."""
    _check_price(price)
    if state.low_water <= price <= state.high_water:
        return state
    return replace(state, high_water=max(state.high_water, price),
                   low_water=min(state.low_water, price))


def _pct(num: Decimal, den: Decimal) -> str:
    return f"{num * _HUNDRED / den:,.2f}%"


def _p(x: Decimal) -> str:
    return f"{x:,.2f}" if x.is_finite() else str(x)


def evaluate_exits(
    position: Position, state: PositionState, price: Decimal, rules: ExitRules, now: datetime
) -> ExitDecision | None:
    """The first exit rule that fires for `position` at `price` (module order), or None."""
    _check_price(price)
    qty = position.qty
    if qty == 0:
        return None
    entry = position.avg_entry_price
    if not entry.is_finite() or entry <= 0:
        raise ValueError(f"position {position.symbol}: avg_entry_price must be positive and "
                         f"finite, got {entry!r}")
    long = qty > 0
    close_side = Side.SELL if long else Side.BUY
    where = f"{position.symbol} {'long' if long else 'short'} {qty.normalize():f}"

    option = OptionSymbol.parse(position.symbol)
    intent = None if option is None else "sell_to_close" if long else "buy_to_close"

    def fire(rule: ExitRule, why: str) -> ExitDecision:
        return ExitDecision(rule, f"{rule.value}: {where}: {why}", position.symbol, close_side,
                            abs(qty), intent)

    days = rules.close_options_days_before_expiry
    if option is not None:
        local = now.astimezone(NEW_YORK)
        today = local.date()
        left = (option.expiry - today).days
        if days is not None and left <= days:
            return fire(ExitRule.OPTION_EXPIRY,
                        f"expires {option.expiry.isoformat()}, {left} day(s) left (New York "
                        f"date {today.isoformat()}), close_options_days_before_expiry {days}")
        by = rules.expiry_day_exit_by
        if by is not None and (left < 0 or (left == 0 and local.time() >= by)):
            return fire(ExitRule.OPTION_EXPIRY_DAY,
                        f"expires {option.expiry.isoformat()} and it is "
                        f"{local:%Y-%m-%d %H:%M} New York time, at or after expiry_day_exit_by "
                        f"{by:%H:%M} (Alpaca may liquidate expiring positions from about "
                        "15:15)")

    gain = (price - entry) if long else (entry - price)  # per unit, + is profit
    if rules.stop_loss_pct is not None and -gain * _HUNDRED >= rules.stop_loss_pct * entry:
        return fire(ExitRule.STOP_LOSS,
                    f"price {_p(price)} vs entry {_p(entry)} is a loss of {_pct(-gain, entry)}, "
                    f"stop_loss_pct {rules.stop_loss_pct}%")

    if rules.trailing_stop_pct is not None:
        if long:
            mark = max(state.high_water, price)
            against = mark - price
        else:
            mark = min(state.low_water, price)
            against = price - mark
        if against * _HUNDRED >= rules.trailing_stop_pct * mark:
            kind = "high-water" if long else "low-water"
            return fire(ExitRule.TRAILING_STOP,
                        f"price {_p(price)} is {_pct(against, mark)} from the {kind} mark "
                        f"{_p(mark)}, trailing_stop_pct {rules.trailing_stop_pct}%")

    if rules.take_profit_pct is not None and gain * _HUNDRED >= rules.take_profit_pct * entry:
        return fire(ExitRule.TAKE_PROFIT,
                    f"price {_p(price)} vs entry {_p(entry)} is a gain of {_pct(gain, entry)}, "
                    f"take_profit_pct {rules.take_profit_pct}%")

    if rules.max_hold_s is not None:
        held = (now - state.opened_at).total_seconds()
        if held >= rules.max_hold_s:
            return fire(ExitRule.MAX_HOLD,
                        f"held {held:,.0f}s since {state.opened_at.isoformat()}, "
                        f"max_hold_s {rules.max_hold_s:,.0f}")
    return None


def exit_client_order_id(
    account: str, symbol: str, position_opened_at: datetime, rule: ExitRule | str
) -> str:
    """Deterministic client order id for closing this position under this rule (<= 128).

    Same inputs -> same id, whatever restarts happen in between; a different position
    (another opening time) of the same symbol gets another id.
    """
    if position_opened_at.tzinfo is None:
        raise ValueError(f"position_opened_at must be timezone-aware, got {position_opened_at!r}")
    check_account_name(account)
    if not symbol:
        raise ValueError("exit client order id needs a symbol")
    opened = position_opened_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")
    rule_text = ExitRule(rule).value
    cid = f"ops-{account}-exit-{symbol}-{opened}-{rule_text}"
    if len(cid) <= 128:
        return cid
    # Only an absurdly long symbol gets here; keep the account prefix for lookups.
    digest = hashlib.sha256(f"{symbol}-{opened}".encode()).hexdigest()[:32]
    return f"ops-{account}-exit-{digest}-{rule_text}"


def flatten_client_order_id(account: str, symbol: str, epoch: datetime, attempt: int = 0) -> str:
    """Deterministic client order id of the kill switch's close of the managed part of a
    position (<= 128 chars): `ops-<account>-flat-<symbol>-<epoch>-<attempt>`.

    `epoch` is the position's (its tracked opening time, or the flatten's own start when
    none is tracked); `attempt` counts closes of that epoch that ended without closing it
    (canceled, expired, rejected after acceptance). Same inputs -> same id after any
    restart, so a repeat pass finds its order at the broker (duplicate id) instead of
    sending a second one.
    """
    if epoch.tzinfo is None:
        raise ValueError(f"epoch must be timezone-aware, got {epoch!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
    check_account_name(account)
    if not symbol:
        raise ValueError("flatten client order id needs a symbol")
    stamp = epoch.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")
    cid = f"{flatten_prefix(account)}{symbol}-{stamp}-{attempt}"
    if len(cid) <= 128:
        return cid
    digest = hashlib.sha256(f"{symbol}-{stamp}".encode()).hexdigest()[:32]
    return f"{flatten_prefix(account)}{digest}-{attempt}"


def flatten_prefix(account: str) -> str:
    """Every flatten close of `account` has a client order id starting with this."""
    return f"ops-{account}-flat-"
