"""Position-manager queries: drift baselines, expected positions, exit state, exit records.

What lives here: the SQL behind position drift detection (`expected_positions`,
`save_baseline`), the persisted exit-rule state per position (`load_exit_states`,
`save_exit_state`, `delete_exit_states`), the audit row of each exit decision
(`record_exit_decision`), and the pure comparison `position_mismatches`. Tables come from
migration 0004_position_manager.sql. What does not: deciding (ops.exits, the role) and
the buffered writes (ops.store.store).

These go straight to Postgres (`store.pool`), never through the outage buffer: they are
reads that must see the truth (a drift check against buffered, not yet replayed events
would be wrong), or the position manager's own memory, which it keeps in-process while
Postgres is away and writes again on the next tick.

Drift model. A baseline is the broker's positions at the last sync that agreed with the
database, plus `fill_id`, the highest `order_events.id` among the fills accounted for
then. Expected positions now = baseline + signed quantities of the fill events stored
with id > fill_id. The baseline only moves forward on agreement, so a fill the database
never received (lost event, order placed behind our back) stays a mismatch until it is
explained (the event is backfilled), reversed, or accepted by an operator
(`accept_broker_positions`). Ids, not timestamps, mark what was counted: the account's
events are written by one stream process at a time, in order (the store sends every
write through the buffer while it holds rows), so ids grow in commit order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.exits import PositionState

_ZERO = Decimal(0)

_FILLS_SQL = """
SELECT symbol,
       sum(CASE side WHEN 'buy' THEN qty WHEN 'sell' THEN -qty END) AS delta,
       count(*) FILTER (WHERE side IS NULL OR side NOT IN ('buy', 'sell') OR qty IS NULL)
           AS unknown,
       count(*) AS fills,
       max(id) AS max_id
FROM (
    SELECT e.id, e.symbol, e.qty,
           coalesce(o.side, e.raw -> 'data' -> 'order' ->> 'side', e.raw ->> 'side') AS side
    FROM order_events e
    LEFT JOIN orders o ON o.id = e.order_id AND o.account = e.account
    WHERE e.account = $1 AND e.id > $2 AND e.event IN ('fill', 'partial_fill')
) f
GROUP BY symbol
"""


@dataclass(frozen=True, slots=True)
class Baseline:
    account: str
    positions: dict[str, Decimal]  # symbol -> signed qty, non-zero only
    fill_id: int
    as_of: datetime
    confirmed: bool  # False: adopted from the broker at first sight, not yet agreed with


@dataclass(frozen=True, slots=True)
class Expected:
    """What the database expects the broker to hold, and what that rests on."""

    baseline: Baseline
    positions: dict[str, Decimal]  # symbol -> signed qty, non-zero only
    fill_id: int  # highest fill event id counted (baseline.fill_id if none since)
    fills: int  # fill events counted since the baseline
    unverifiable: frozenset[str]  # symbols with a fill whose side/qty is unreadable


@dataclass(frozen=True, slots=True)
class Mismatch:
    symbol: str
    expected: Decimal
    actual: Decimal

    def describe(self) -> str:
        return f"{self.symbol} expected {_q(self.expected)} actual {_q(self.actual)}"


def _q(x: Decimal) -> str:
    return format(x.normalize(), "f") if x else "0"


def _nonzero(items: Iterable[tuple[str, Decimal]]) -> dict[str, Decimal]:
    return {s: q for s, q in items if q != 0}


def position_mismatches(
    expected: Mapping[str, Decimal], actual: Mapping[str, Decimal],
    ignore: Iterable[str] = (),
) -> list[Mismatch]:
    """Symbols whose signed quantities differ (a missing symbol counts as 0), sorted."""
    skip = set(ignore)
    out = []
    for symbol in sorted(set(expected) | set(actual)):
        e, a = expected.get(symbol, _ZERO), actual.get(symbol, _ZERO)
        if e != a and symbol not in skip:
            out.append(Mismatch(symbol, e, a))
    return out


async def max_fill_id(pool: asyncpg.Pool, account: str) -> int:
    """The highest fill event id stored for `account` (0 when none)."""
    value = await pool.fetchval(
        "SELECT coalesce(max(id), 0) FROM order_events"
        " WHERE account = $1 AND event IN ('fill', 'partial_fill')", account)
    return int(value)


async def load_baseline(pool: asyncpg.Pool, account: str) -> Baseline | None:
    row = await pool.fetchrow("SELECT * FROM position_baselines WHERE account = $1", account)
    if row is None:
        return None
    raw = row["positions"]
    data: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return Baseline(account, _nonzero((s, Decimal(str(q))) for s, q in data.items()),
                    int(row["fill_id"]), row["as_of"], bool(row["confirmed"]))


async def save_baseline(
    pool: asyncpg.Pool, account: str, positions: Mapping[str, Decimal], fill_id: int,
    as_of: datetime, *, confirmed: bool,
) -> Baseline:
    """Store the account's baseline (replacing the previous one) and return it."""
    clean = _nonzero(positions.items())
    await pool.execute(
        """
        INSERT INTO position_baselines (account, positions, fill_id, as_of, confirmed)
        VALUES ($1, $2::text::jsonb, $3, $4, $5)
        ON CONFLICT (account) DO UPDATE SET positions = excluded.positions,
            fill_id = excluded.fill_id, as_of = excluded.as_of, confirmed = excluded.confirmed
        """,
        account, json.dumps({s: str(q) for s, q in clean.items()}), fill_id, as_of, confirmed,
    )
    return Baseline(account, clean, fill_id, as_of, confirmed)


async def accept_broker_positions(
    pool: asyncpg.Pool, account: str, positions: Mapping[str, Decimal], as_of: datetime
) -> Baseline:
    """Operator action: take the broker's positions as the truth from now on.

    Resets the baseline to `positions` with every fill stored so far counted. The next
    sync then agrees (unless something moves meanwhile) and lifts the drift block.
    """
    return await save_baseline(pool, account, positions, await max_fill_id(pool, account),
                               as_of, confirmed=True)


async def expected_positions(pool: asyncpg.Pool, baseline: Baseline) -> Expected:
    """Baseline + the signed fills stored since it, in one consistent read."""
    rows = await pool.fetch(_FILLS_SQL, baseline.account, baseline.fill_id)
    totals = dict(baseline.positions)
    unverifiable = set()
    fill_id, fills = baseline.fill_id, 0
    for r in rows:
        symbol = r["symbol"]
        if r["unknown"]:
            unverifiable.add(symbol)
        if r["delta"] is not None:
            totals[symbol] = totals.get(symbol, _ZERO) + Decimal(r["delta"])
        fill_id = max(fill_id, int(r["max_id"]))
        fills += int(r["fills"])
    return Expected(baseline, _nonzero(totals.items()), fill_id, fills,
                    frozenset(unverifiable))


# --- exit-rule state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrackedPosition:
    """Exit-rule state of one position: PositionState plus the direction it was opened in."""

    state: PositionState
    long: bool


async def load_exit_states(pool: asyncpg.Pool, account: str) -> dict[str, TrackedPosition]:
    rows = await pool.fetch(
        "SELECT symbol, opened_at, long, high_water, low_water FROM position_exit_state"
        " WHERE account = $1", account)
    return {
        r["symbol"]: TrackedPosition(
            PositionState(r["opened_at"], Decimal(r["high_water"]), Decimal(r["low_water"])),
            bool(r["long"]),
        )
        for r in rows
    }


async def save_exit_state(
    pool: asyncpg.Pool, account: str, symbol: str, tracked: TrackedPosition, at: datetime
) -> None:
    s = tracked.state
    await pool.execute(
        """
        INSERT INTO position_exit_state
            (account, symbol, opened_at, long, high_water, low_water, updated_at)
        VALUES ($1, $2, $3, $4, $5::text::numeric, $6::text::numeric, $7)
        ON CONFLICT (account, symbol) DO UPDATE SET opened_at = excluded.opened_at,
            long = excluded.long, high_water = excluded.high_water,
            low_water = excluded.low_water, updated_at = excluded.updated_at
        """,
        account, symbol, s.opened_at, tracked.long, str(s.high_water), str(s.low_water), at,
    )


async def delete_exit_states(pool: asyncpg.Pool, account: str, keep: Iterable[str]) -> int:
    """Forget the state of every position of `account` not in `keep` (it was closed)."""
    status = await pool.execute(
        "DELETE FROM position_exit_state WHERE account = $1 AND NOT (symbol = ANY($2::text[]))",
        account, list(keep))
    return int(str(status).split()[-1])


# --- exit decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExitRecord:
    client_order_id: str
    account: str
    symbol: str
    rule: str
    side: str
    qty: Decimal
    reason: str
    outcome: str  # SubmitResult outcome: accepted | rejected | unknown
    outcome_reason: str | None
    broker_order_id: str | None
    decided_at: datetime
    attempts: int = 1


async def record_exit_decision(pool: asyncpg.Pool, rec: ExitRecord) -> None:
    """Upsert the decision row by client_order_id; a repeat counts one more attempt."""
    await pool.execute(
        """
        INSERT INTO exit_decisions (client_order_id, account, symbol, rule, side, qty, reason,
                                    outcome, outcome_reason, broker_order_id, decided_at)
        VALUES ($1, $2, $3, $4, $5, $6::text::numeric, $7, $8, $9, $10, $11)
        ON CONFLICT (client_order_id) DO UPDATE SET outcome = excluded.outcome,
            outcome_reason = excluded.outcome_reason,
            broker_order_id = coalesce(excluded.broker_order_id,
                                       exit_decisions.broker_order_id),
            attempts = exit_decisions.attempts + 1
        """,
        rec.client_order_id, rec.account, rec.symbol, rec.rule, rec.side, str(rec.qty),
        rec.reason, rec.outcome, rec.outcome_reason, rec.broker_order_id, rec.decided_at,
    )


async def exit_records(pool: asyncpg.Pool, account: str) -> list[ExitRecord]:
    rows = await pool.fetch(
        "SELECT * FROM exit_decisions WHERE account = $1 ORDER BY decided_at, client_order_id",
        account)
    return [
        ExitRecord(r["client_order_id"], r["account"], r["symbol"], r["rule"], r["side"],
                   Decimal(r["qty"]), r["reason"], r["outcome"], r["outcome_reason"],
                   r["broker_order_id"], r["decided_at"], int(r["attempts"]))
        for r in rows
    ]
