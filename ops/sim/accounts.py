"""Simulator accounts: the configured specs (keys, starting cash) and their mutable state.

`SimAccountSpec` is what callers configure and what `ops sim --show-accounts` prints: keys
are deterministic and obviously fake. `AccountState`, `OrderState` and `PositionState`
hold the broker-side truth and serialise to/from JSON for `--state` files.
Pricing and order rules live in the engine, not here.

Options trading level per spec (docs/broker-protocol.md 3.7: 0 none, 1 covered calls and
cash-secured puts, 2 + long calls and puts, 3 + spreads). Alpaca documents no default for
a new account; its paper accounts come with level 3, so `make_spec` gives 3. The demo's
`tiny` gets 2: a small account is the one likely to lack spread approval, and 2 still
allows the long options the demo strategy buys (refused orders then show up in tests of
levels, not in the demo).

Day trades (pattern-day-trading protection, ledger.py) are bookkept on `AccountState`:
`opened_on` (symbol -> New York date of the latest fill that opened or added to the
position), `day_trades` (one entry per closing order that closed a position opened the
same day) and the sticky `pattern_day_trader` flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ops.sim.wire import dec, iso_z, opt_dec, opt_iso, stable_uuid

OPEN_STATUSES = frozenset(
    {"new", "partially_filled", "accepted", "pending_new", "pending_cancel", "pending_replace",
     "held", "accepted_for_bidding", "calculated", "stopped", "suspended", "done_for_day"}
)


@dataclass(frozen=True, slots=True)
class SimAccountSpec:
    """One simulated account. `secret` is a throwaway simulator secret, never a real one."""

    name: str
    account_number: str
    key_id: str
    secret: str
    cash: Decimal
    shorting_enabled: bool = True
    options_trading_level: int = 3

    def __post_init__(self) -> None:
        level = self.options_trading_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 3:
            raise ValueError(f"options_trading_level must be 0..3, got {level!r}")

    def __repr__(self) -> str:
        return (
            f"SimAccountSpec(name={self.name!r}, account_number={self.account_number!r}, "
            f"key_id={self.key_id!r}, secret='***', cash={self.cash}, "
            f"options_trading_level={self.options_trading_level})"
        )

    def public_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "account_number": self.account_number,
            "key_id": self.key_id,
            "secret": self.secret,
        }


def make_spec(
    name: str,
    account_number: str,
    cash: Decimal,
    seed: int,
    index: int,
    *,
    shorting_enabled: bool | None = None,
    options_trading_level: int = 3,
) -> SimAccountSpec:
    """A spec with deterministic, obviously fake keys derived from (name, seed); options
    level 3 unless told (Alpaca's paper default)."""
    key_id = f"PKSIM{name.upper()[:8]:0<8}{index:08d}"
    secret = "SIM" + hashlib.sha256(f"{name}:{seed}".encode()).hexdigest()[:37]
    # Alpaca requires 2,000 USD equity for margin and shorting.
    shorting = cash >= 2000 if shorting_enabled is None else shorting_enabled
    return SimAccountSpec(name, account_number, key_id, secret, Decimal(cash), shorting,
                          options_trading_level)


def default_accounts(seed: int = 7) -> list[SimAccountSpec]:
    """The demo accounts: `large` (100,000 USD, options level 3) and `tiny` (1,000 USD,
    options level 2: long calls and puts, no spreads)."""
    return [
        make_spec("large", "PASIM0000001", Decimal(100_000), seed, 1),
        make_spec("tiny", "PASIM0000002", Decimal(1_000), seed, 2, options_trading_level=2),
    ]


def demo_accounts(identities: Sequence[tuple[str, str, str, str]]) -> list[SimAccountSpec]:
    """The demo accounts with the given (name, account number, key id, secret): a home's
    own identity (ops.runtime.demo), so no other home's keys open them. Cash and options level
    come from the built-in demo account of that name; an unknown name is a ValueError."""
    templates = {a.name: a for a in default_accounts()}
    out = []
    for name, number, key_id, secret in identities:
        base = templates.get(name)
        if base is None:
            raise ValueError(f"the simulator has no demo account {name!r} "
                             f"(it has {', '.join(sorted(templates))})")
        out.append(dataclasses.replace(base, account_number=number, key_id=key_id,
                                       secret=secret))
    return out


@dataclass(slots=True)
class OrderState:
    id: str
    client_order_id: str
    account: str
    symbol: str
    asset_class: str
    asset_id: str
    side: str
    type: str
    time_in_force: str
    status: str
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime
    seq: int
    qty: Decimal | None = None
    notional: Decimal | None = None
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None
    extended_hours: bool = False
    position_intent: str | None = None
    stop_triggered: bool = False
    reject_pending: bool = False
    filled_at: datetime | None = None
    expired_at: datetime | None = None
    canceled_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return (self.qty or Decimal(0)) - self.filled_qty

    def wire(self) -> dict[str, Any]:
        """The Alpaca Order entity: every documented key, null when unused."""
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": iso_z(self.created_at),
            "updated_at": iso_z(self.updated_at),
            "submitted_at": iso_z(self.submitted_at),
            "filled_at": opt_iso(self.filled_at),
            "expired_at": opt_iso(self.expired_at),
            "expires_at": None,
            "canceled_at": opt_iso(self.canceled_at),
            "failed_at": opt_iso(self.failed_at),
            "replaced_at": opt_iso(self.replaced_at),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": self.asset_id,
            "symbol": self.symbol,
            "asset_class": self.asset_class,
            "notional": opt_dec(self.notional),
            "qty": opt_dec(self.qty),
            "filled_qty": dec(self.filled_qty),
            "filled_avg_price": opt_dec(self.filled_avg_price),
            "order_class": "",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent,
            "time_in_force": self.time_in_force,
            "limit_price": opt_dec(self.limit_price),
            "stop_price": opt_dec(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": None,
            "trail_percent": opt_dec(self.trail_percent),
            "trail_price": opt_dec(self.trail_price),
            "hwm": opt_dec(self.hwm),
            "ratio_qty": None,
        }


@dataclass(slots=True)
class PositionState:
    symbol: str
    asset_class: str
    asset_id: str
    qty: Decimal
    avg_entry_price: Decimal


@dataclass(slots=True)
class AccountState:
    spec: SimAccountSpec
    cash: Decimal
    last_equity: Decimal
    positions: dict[str, PositionState] = field(default_factory=dict)
    orders: dict[str, OrderState] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    activities: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    # Day-trade bookkeeping (see the module docstring; ledger.py keeps it).
    opened_on: dict[str, str] = field(default_factory=dict)  # symbol -> ISO date (NY)
    day_trades: list[dict[str, str]] = field(default_factory=list)  # date, symbol, order_id
    pattern_day_trader: bool = False

    @property
    def id(self) -> str:
        return stable_uuid("account", self.spec.account_number)

    def to_json(self) -> dict[str, Any]:
        return {
            "cash": str(self.cash),
            "last_equity": str(self.last_equity),
            "positions": [_to_json(p) for p in self.positions.values()],
            "orders": [_to_json(o) for o in self.orders.values()],
            "activities": self.activities,
            "created_at": opt_iso(self.created_at),
            "opened_on": dict(self.opened_on),
            "day_trades": list(self.day_trades),
            "pattern_day_trader": self.pattern_day_trader,
        }

    @classmethod
    def from_json(cls, spec: SimAccountSpec, data: dict[str, Any]) -> AccountState:
        state = cls(spec, Decimal(data["cash"]), Decimal(data["last_equity"]))
        for p in data.get("positions", []):
            pos = _from_json(PositionState, p)
            state.positions[pos.symbol] = pos
        for o in data.get("orders", []):
            order = _from_json(OrderState, o)
            state.orders[order.id] = order
            state.by_client_id[order.client_order_id] = order.id
        # State files written before activity ids and execution ids were made independent
        # carry an internal "execution_id" per activity: not an Alpaca field, dropped.
        state.activities = [{k: v for k, v in a.items() if k != "execution_id"}
                            for a in data.get("activities", [])]
        if data.get("created_at"):
            state.created_at = datetime.fromisoformat(str(data["created_at"]))
        # Older state files have no day-trade bookkeeping: none made.
        state.opened_on = {str(k): str(v) for k, v in dict(data.get("opened_on", {})).items()}
        state.day_trades = [dict(t) for t in data.get("day_trades", [])]
        state.pattern_day_trader = bool(data.get("pattern_day_trader", False))
        return state


def _to_json(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Decimal):
            value = {"d": str(value)}
        elif isinstance(value, datetime):
            value = {"t": value.isoformat()}
        out[f.name] = value
    return out


def _from_json(cls: Any, data: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and "d" in value:
            value = Decimal(value["d"])
        elif isinstance(value, dict) and "t" in value:
            value = datetime.fromisoformat(value["t"])
        kwargs[name] = value
    return cls(**kwargs)
