"""Signal reads for operators: `ops signal list|show`, `ops signal add`'s wait for the
dispatcher's verdict, the dashboard's signals pane.

What lives here: the full signal record (`SignalRecord`, with the order it became, if
any: `LinkedOrder`), the operator's status words (`STATES`: queued, submitted, rejected,
expired, unknown) and the queries (`list_signals`, `find_signal`), reached through
`Store.signals()` / `Store.signal()`. What does not: the dispatcher's claims and
decisions (ops/store/signals.py, `Store.record_signal_decision`).

Straight from Postgres, never the outage buffer: a verdict is the dispatcher's word in
Postgres, and a guess from the buffer would be worse than "unreachable" (the caller sees
the outage as `StorageUnavailable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

#: The operator's word for a stored status -> the stored statuses it covers. `queued`:
#: waiting for the dispatcher or being dispatched now; `unknown`: sent, the broker's answer
#: not settled yet (the next pass looks it up); `submitted`: the broker took the order.
STATES: dict[str, tuple[str, ...]] = {
    "queued": ("pending", "claimed"),
    "submitted": ("submitted", "filled", "canceled"),
    "rejected": ("rejected",),
    "expired": ("expired",),
    "unknown": ("unknown",),
}
#: Stored statuses that are the dispatcher's final word.
FINAL = frozenset(("submitted", "filled", "canceled", "rejected", "expired"))


def state_of(status: str) -> str:
    """The operator's word (a key of STATES) for a stored status."""
    for word, statuses in STATES.items():
        if status in statuses:
            return word
    return status


@dataclass(frozen=True, slots=True)
class LinkedOrder:
    """The broker order a signal became, as the stream last stored it."""

    id: str
    status: str
    qty: Decimal | None
    notional: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    submitted_at: datetime | None
    filled_at: datetime | None
    canceled_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """Every column of one `signals` row, and its order."""

    id: int
    idempotency_key: str | None
    account: str
    symbol: str
    side: str
    qty: Decimal | None
    notional: Decimal | None
    order_type: str
    limit_price: Decimal | None
    time_in_force: str
    strategy: str | None
    created_at: datetime
    expires_at: datetime | None
    status: str
    reason: str | None
    client_order_id: str | None
    broker_order_id: str | None
    decided_at: datetime | None
    attempts: int
    order: LinkedOrder | None = None
    reduce_only: bool = False

    @property
    def state(self) -> str:
        return state_of(self.status)

    @property
    def decided(self) -> bool:
        """The dispatcher's final word is in (submitted, rejected, expired)."""
        return self.status in FINAL

    @property
    def order_id(self) -> str | None:
        return self.broker_order_id or (self.order.id if self.order else None)


_SELECT = """
SELECT s.id, s.idempotency_key, s.account, s.symbol, s.side, s.qty, s.notional,
       s.order_type, s.limit_price, s.time_in_force, s.strategy, s.created_at, s.expires_at,
       s.status, s.reason, s.client_order_id, s.broker_order_id, s.decided_at, s.attempts,
       s.reduce_only, o.id AS o_id, o.status AS o_status, o.qty AS o_qty, o.notional AS o_notional,
       o.filled_qty AS o_filled_qty, o.filled_avg_price AS o_filled_avg_price,
       o.submitted_at AS o_submitted_at, o.filled_at AS o_filled_at,
       o.canceled_at AS o_canceled_at, o.updated_at AS o_updated_at
FROM signals s
LEFT JOIN LATERAL (
    SELECT * FROM orders
    WHERE orders.account = s.account AND orders.client_order_id = s.client_order_id
    ORDER BY (orders.id = s.broker_order_id) DESC, orders.updated_at DESC LIMIT 1
) o ON true
"""


def _record(r: asyncpg.Record) -> SignalRecord:
    order = None if r["o_id"] is None else LinkedOrder(
        id=r["o_id"], status=r["o_status"], qty=r["o_qty"], notional=r["o_notional"],
        filled_qty=r["o_filled_qty"], filled_avg_price=r["o_filled_avg_price"],
        submitted_at=r["o_submitted_at"], filled_at=r["o_filled_at"],
        canceled_at=r["o_canceled_at"], updated_at=r["o_updated_at"])
    return SignalRecord(
        id=int(r["id"]), idempotency_key=r["idempotency_key"], account=r["account"],
        symbol=r["symbol"], side=r["side"], qty=r["qty"], notional=r["notional"],
        order_type=r["order_type"], limit_price=r["limit_price"],
        time_in_force=r["time_in_force"], strategy=r["strategy"], created_at=r["created_at"],
        expires_at=r["expires_at"], status=r["status"], reason=r["reason"],
        client_order_id=r["client_order_id"], broker_order_id=r["broker_order_id"],
        decided_at=r["decided_at"], attempts=int(r["attempts"]), order=order,
        reduce_only=bool(r["reduce_only"]))


def statuses_of(states: Sequence[str]) -> list[str]:
    """The stored statuses behind operator words; ValueError naming an unknown word."""
    out: list[str] = []
    for word in states:
        if word not in STATES:
            raise ValueError(f"signal state {word!r}: expected one of {', '.join(STATES)}")
        out.extend(STATES[word])
    return out


async def list_signals(pool: asyncpg.Pool, *, account: str | None = None,
                       states: Sequence[str] | None = None, since: datetime | None = None,
                       limit: int = 200) -> list[SignalRecord]:
    """Signals newest first (by creation), optionally of one account, in some states
    (operator words, see STATES), created since a time; at most `limit`."""
    if limit < 1:
        raise ValueError(f"list_signals: limit must be >= 1, got {limit}")
    # The statuses go into the SQL text, not a parameter: they are STATES' constants, and
    # only a literal list lets Postgres use the partial index of the waiting ones (0021).
    where = "" if states is None else \
        "AND s.status IN (" + ", ".join(f"'{x}'" for x in statuses_of(states)) + ")"
    rows = await pool.fetch(
        _SELECT + f"""
        WHERE ($1::text IS NULL OR s.account = $1) {where}
          AND ($2::timestamptz IS NULL OR s.created_at >= $2)
        ORDER BY s.created_at DESC, s.id DESC LIMIT $3""",
        account, since, limit)
    return [_record(r) for r in rows]


async def find_signal(pool: asyncpg.Pool, signal_id: int) -> SignalRecord | None:
    """One signal by id, with its order; None when there is no such signal."""
    r = await pool.fetchrow(_SELECT + " WHERE s.id = $1", signal_id)
    return None if r is None else _record(r)


__all__ = ["FINAL", "STATES", "LinkedOrder", "SignalRecord", "find_signal", "list_signals",
           "state_of", "statuses_of"]
