"""The project's own domain types, shared by the broker adapter, the store and the roles.

Plain frozen dataclasses with Decimal money: nothing here imports alpaca-py, asyncpg or
textual. The broker adapter converts alpaca-py models into these; the store persists them.
Also the one decoding of a stored kill switch (`kill_switch_from_value`,
`kill_switch_in`), shared by the roles, `ops status` and the dashboard.
Order statuses and trade events are kept as plain strings on purpose: the broker has
added values before (docs/broker-protocol.md section 6.3), and an unknown value must be stored,
not rejected.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger(__name__)

JsonDict = Mapping[str, Any]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    OPG = "opg"
    CLS = "cls"
    IOC = "ioc"
    FOK = "fok"


class AssetClass(StrEnum):
    US_EQUITY = "us_equity"
    US_OPTION = "us_option"
    CRYPTO = "crypto"


class KillSwitch(StrEnum):
    """Graded per-account kill switch, persisted in the `controls` table."""

    OFF = "off"
    HALT = "halt"  # no new entries; exits still allowed
    REDUCE_ONLY = "reduce-only"  # only orders that reduce an existing position
    FLATTEN = "flatten"  # cancel the pipeline's orders, close the MANAGED part of positions
    FLATTEN_ALL = "flatten-all"  # cancel every open order and close every position

    @property
    def flattens(self) -> bool:
        """Either flatten mode: no new orders, positions being closed by the dispatcher."""
        return self in (KillSwitch.FLATTEN, KillSwitch.FLATTEN_ALL)


#: The `controls` key of an account's kill switch; its value is {"mode": "<KillSwitch>"}.
KILL_SWITCH_KEY = "kill_switch"


def kill_switch_from_value(value: Any, account: str | None = None) -> KillSwitch:
    """The mode a stored kill-switch value says: {"mode": "halt"} as `ops pause` and the
    dashboard write it; a bare mode string and the object's JSON text are read too.

    Anything else (no mode, an unknown one, a null, text that is not JSON) is HALT: a row
    exists, so someone meant to engage the switch, and an unreadable switch must never
    read as off. HALT is the strictest mode that still lets exits run. The one decoding:
    the roles, `ops status` and the dashboard all read the switch through it.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            pass  # not JSON: decoded below as malformed
    mode = value.get("mode") if isinstance(value, Mapping) else value
    if isinstance(mode, str):
        try:
            return KillSwitch(mode)
        except ValueError:
            pass
    log.error("kill switch%s: stored value %r is not one of %s: treating it as halt",
              f" of {account}" if account else "", value, [k.value for k in KillSwitch])
    return KillSwitch.HALT


class ControlRow(Protocol):
    """A `controls` row as the store reads it (ops.store.Control)."""

    @property
    def account(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def value(self) -> Any: ...


def kill_switch_in(rows: Iterable[ControlRow]) -> KillSwitch:
    """The kill switch among an account's controls rows: OFF when none is set, else its
    value decoded by `kill_switch_from_value`."""
    for row in rows:
        if row.key == KILL_SWITCH_KEY:
            return kill_switch_from_value(row.value, row.account)
    return KillSwitch.OFF


TERMINAL_ORDER_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
FILL_EVENTS = frozenset({"fill", "partial_fill"})


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """The broker's view of one account (numbers only, never keys)."""

    account_id: str
    account_number: str
    status: str
    currency: str
    cash: Decimal
    equity: Decimal
    last_equity: Decimal
    buying_power: Decimal
    options_buying_power: Decimal | None = None
    long_market_value: Decimal | None = None
    short_market_value: Decimal | None = None
    # Each of these may be absent (None): Alpaca removed the pattern-day-trading fields on
    # 2026-07-06 (docs/broker-protocol.md 3.1, section 6.10) while 3.7a still lists them, and
    # `options_trading_level` is only sent to accounts with options enabled.
    options_trading_level: int | None = None  # 0 none, 1 covered, 2 long, 3 spreads
    pattern_day_trader: bool | None = None
    daytrade_count: int | None = None  # day trades in the rolling 5 business days


@dataclass(frozen=True, slots=True)
class Clock:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What the dispatcher asks the broker for. Exactly one of qty/notional is set."""

    symbol: str
    side: Side
    client_order_id: str
    qty: Decimal | None = None
    notional: Decimal | None = None
    order_type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    position_intent: str | None = None

    def __post_init__(self) -> None:
        if (self.qty is None) == (self.notional is None):
            raise ValueError("OrderRequest needs exactly one of qty or notional")
        if self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and self.limit_price is None:
            raise ValueError(f"{self.order_type} order needs limit_price")
        if self.order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and self.stop_price is None:
            raise ValueError(f"{self.order_type} order needs stop_price")


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the broker reports it (state after the latest event)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    status: str
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None
    qty: Decimal | None = None
    notional: Decimal | None = None
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    asset_class: str = AssetClass.US_EQUITY.value
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    replaces: str | None = None
    replaced_by: str | None = None
    raw: JsonDict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_ORDER_STATUSES


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """One `trade_updates` event. `event` is kept verbatim, known or not."""

    event: str
    order: Order
    timestamp: datetime
    execution_id: str | None = None
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None
    raw: JsonDict = field(default_factory=dict, compare=False, repr=False)
    # `raw` as the JSON text it arrived in, when it came off the wire (its data.order is
    # `order.raw`): stored as is instead of re-encoding `raw`. None when built otherwise.
    raw_json: str | None = field(default=None, compare=False, repr=False)
    # Fills: the order's cumulative filled quantity after this execution, when it is not
    # `order.filled_qty` (a fill rebuilt from a FILL activity carries the activity's
    # cum_qty, its order being the order's current state). None: see `fill_cum`.
    cum_qty: Decimal | None = None

    @property
    def fill_cum(self) -> Decimal | None:
        """The fill's identity with the order id: the cumulative filled quantity after it.

        Alpaca documents it on every source (trade_updates: `order.filled_qty` of the order
        after the event; FILL activity: `cum_qty`), so a fill is recognised whichever way it
        arrives; never derived from the shape of an id. None for non-fill events and for a
        fill whose cumulative quantity is missing or not positive (stored verbatim, keyed
        like other events, and not counted as a fill)."""
        if self.event not in FILL_EVENTS:
            return None
        cum = self.cum_qty if self.cum_qty is not None else self.order.filled_qty
        return cum if cum > 0 else None

    @property
    def event_key(self) -> str:
        """Natural key that makes storing an event idempotent (docs/broker-protocol.md section 6.4).

        Fills by their identity (`fill_key`: order, cumulative quantity); other events by
        (order, event, timestamp), which a duplicate delivery repeats exactly. The database
        enforces the fill identity on its columns as well (migration 0013)."""
        cum = self.fill_cum
        if cum is not None:
            return fill_key(self.order.id, cum)
        if self.execution_id:
            return f"exec:{self.execution_id}"
        return f"{self.order.id}:{self.event}:{self.timestamp.isoformat()}"


def fill_key(order_id: str, cum_qty: Decimal) -> str:
    """`fill:<order id>:<cumulative qty>`, the quantity in plain notation (10, not 1E+1)."""
    return f"fill:{order_id}:{format(cum_qty.normalize(), 'f')}"


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution from the account activities (`FILL`) endpoint: the REST truth."""

    id: str
    order_id: str
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    transaction_time: datetime
    fill_type: str  # "fill" | "partial_fill"
    order_status: str | None = None


@dataclass(frozen=True, slots=True)
class NonTradeActivity:
    """One non-trade activity from /v2/account/activities (docs/broker-protocol.md 3.7a): a change
    of a position or of cash without a fill (option expiry OPEXP, exercise OPEXC,
    assignment OPASN and the paired underlying trade OPTRD, splits SPLIT/SSP, spin-offs
    SPIN/SSO, symbol or name changes SC/NC, reorganisations REO..., dividends, ...).

    Kept as Alpaca sends it: `activity_type` verbatim (an unknown type is kept, never
    refused), `qty` signed as Alpaca signs it (the documented examples sign it as the
    change of the position: OPEXC "-2" for two long contracts exercised, OPASN "2" for two
    short ones assigned, OPTRD "200" for shares bought), a number that does not parse is
    None (the raw item keeps it). Alpaca gives these a `date`, not a time;
    `transaction_time` is set only when an item carries one.
    """

    id: str
    activity_type: str
    symbol: str | None
    qty: Decimal | None
    price: Decimal | None
    date: date | None
    transaction_time: datetime | None = None
    net_amount: Decimal | None = None
    status: str | None = None
    description: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Position:
    """A broker position. qty is signed (negative = short); option values already x100."""

    symbol: str
    qty: Decimal
    avg_entry_price: Decimal
    cost_basis: Decimal
    asset_class: str = AssetClass.US_EQUITY.value
    side: str = "long"
    market_value: Decimal | None = None
    current_price: Decimal | None = None
    lastday_price: Decimal | None = None
    unrealized_pl: Decimal | None = None
    unrealized_plpc: Decimal | None = None
    qty_available: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    timestamp: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One scheduled slot of a periodic role, as written to the run ledger.

    slot_id is deterministic (account, role, slot time), so a slot that never ran is a
    visible hole, even across restarts.
    """

    slot_id: str
    process: str
    account: str | None
    role: str
    slot_time: datetime
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str  # "running" | "ok" | "error" | "timeout" | "idle-market-closed" | "paused"
    lateness_s: float
    skipped_before: int = 0  # ticks skipped by an overrun just before this slot
    error: str | None = None

    @staticmethod
    def make_slot_id(account: str | None, role: str, slot_time: datetime) -> str:
        return f"{account or '-'}:{role}:{slot_time.strftime('%Y%m%dT%H%M%S.%fZ')}"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Proof that a process's event loop is alive, with progress counters."""

    process: str
    account: str | None
    role: str
    pid: int
    ts: datetime
    started_at: datetime
    counters: Mapping[str, int | float | str] = field(default_factory=dict)


_OCC = re.compile(r"^(?P<root>[A-Z.]{1,6}\d?)(?P<yy>\d{2})(?P<mm>\d{2})(?P<dd>\d{2})"
                  r"(?P<right>[CP])(?P<strike>\d{8})$")


@dataclass(frozen=True, slots=True)
class OptionSymbol:
    """An OCC option symbol, e.g. AAPL240621C00190000 (docs/broker-protocol.md section 3.7)."""

    underlying: str
    expiry: date
    right: str  # "C" | "P"
    strike: Decimal

    @classmethod
    def parse(cls, symbol: str) -> OptionSymbol | None:
        """The parsed symbol, or None when `symbol` is not an OCC option symbol."""
        m = _OCC.match(symbol)
        if m is None:
            return None
        try:
            expiry = date(2000 + int(m["yy"]), int(m["mm"]), int(m["dd"]))
        except ValueError:
            return None
        return cls(m["root"], expiry, m["right"], Decimal(m["strike"]) / 1000)

    def __str__(self) -> str:
        strike = int(self.strike * 1000)
        return f"{self.underlying}{self.expiry:%y%m%d}{self.right}{strike:08d}"

    def describe(self) -> str:
        kind = "call" if self.right == "C" else "put"
        strike = format(self.strike.normalize(), "f")  # 190, not 1.9E+2
        return f"{self.underlying} {self.expiry.isoformat()} {strike} {kind}"


OPTION_MULTIPLIER = Decimal(100)
