"""Position-manager queries: drift baselines, expected positions, exit state, exit records.

What lives here: the SQL behind position drift detection (`expected_positions`,
`save_baseline`), the persisted exit-rule state per position (`load_exit_states`,
`save_exit_state`, `delete_exit_states`), the audit row of each exit decision
(`record_exit_decision`), and the pure comparison `position_mismatches`. Tables come from
migration 0004_position_manager.sql. What does not: deciding (ops.core.exits, the role) and
the buffered writes (ops.store.store). Also here: `open_positions`, every synced
account's open positions in one read (the dashboard, thousands of rows).

These go straight to Postgres (`Store.direct`), never through the outage buffer: they are
reads that must see the truth (a drift check against buffered, not yet replayed events
would be wrong), or the position manager's own memory, which it keeps in-process while
Postgres is away and writes again on the next tick.

Drift model (ops/core/drift.py): a baseline is the broker's positions at the last sync that
agreed with the database (or that was adopted at first sight, or accepted by an operator:
`request_accept`), with the interval its snapshot's cut lies in. Expected positions now =
baseline + the fills executed between the baseline's cut and this sync's
(`fill_deltas`: by execution time, each fill's quantity from its order's cumulative
quantities). The baseline only moves forward on agreement, so a fill the database never
received (lost event, order placed behind our back) stays a mismatch until it is
explained (the completeness check stores it), reversed, or accepted by an operator.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.drift import Cut, FillDelta, nonzero
from ops.core.exits import PositionState

# Every identified fill of the account executed in [$2, $3], with its signed quantity: its
# order's cumulative quantity minus the order's previous stored one (over all the order's
# fills, whatever their time), so a fill whose event did not say `qty` still counts; and
# every non-trade activity applied in [$2, $3] (expiry, exercise, assignment, split, ...):
# drift explained by an activity is not drift.
_FILLS_SQL = """
WITH touched AS (
    SELECT DISTINCT order_id FROM order_events
    WHERE account = $1 AND cum_qty IS NOT NULL AND ts >= $2 AND ts <= $3
), f AS (
    SELECT e.id, e.symbol, e.ts,
           e.cum_qty - coalesce(lag(e.cum_qty) OVER (PARTITION BY e.order_id
                                                    ORDER BY e.cum_qty), 0) AS qty,
           coalesce(o.side, e.raw -> 'data' -> 'order' ->> 'side',
                    e.raw -> 'activity' ->> 'side') AS side
    FROM order_events e
    LEFT JOIN orders o ON o.id = e.order_id AND o.account = e.account
    WHERE e.account = $1 AND e.cum_qty IS NOT NULL
      AND e.order_id IN (SELECT order_id FROM touched)
)
SELECT id, symbol, ts, CASE side WHEN 'buy' THEN qty WHEN 'sell' THEN -qty END AS delta
FROM f WHERE ts >= $2 AND ts <= $3
UNION ALL
-- Non-trade activities applied (migration 0018): each change of a position at the time the
-- position manager first saw it; an unreadable quantity (NULL) makes the symbol
-- unverifiable, as a fill with an unreadable side does.
SELECT id, symbol, at, qty_delta FROM position_activities
WHERE account = $1 AND at >= $2 AND at <= $3 AND symbol IS NOT NULL
  AND (qty_delta IS NULL OR qty_delta <> 0)
ORDER BY ts, id
"""


@dataclass(frozen=True, slots=True)
class Baseline:
    account: str
    positions: dict[str, Decimal]  # symbol -> signed qty, non-zero only
    cut: Cut  # the interval the snapshot's cut lies in
    as_of: datetime  # when it was saved
    confirmed: bool  # False: adopted from the broker at first sight, not yet agreed with


async def fill_deltas(pool: asyncpg.Pool, account: str, start: datetime,
                      end: datetime) -> list[FillDelta]:
    """The account's fills executed in [start, end] and the non-trade activities applied
    then (placed where the position manager first saw them), oldest first (`_FILLS_SQL`)."""
    rows = await pool.fetch(_FILLS_SQL, account, start, end)
    return [FillDelta(r["symbol"], r["ts"],
                      None if r["delta"] is None else Decimal(r["delta"])) for r in rows]


async def max_fill_id(pool: asyncpg.Pool, account: str) -> int:
    """The highest fill event id stored for `account` (0 when none)."""
    value = await pool.fetchval(
        "SELECT coalesce(max(id), 0) FROM order_events"
        " WHERE account = $1 AND cum_qty IS NOT NULL", account)
    return int(value)


async def load_baseline(pool: asyncpg.Pool, account: str) -> Baseline | None:
    row = await pool.fetchrow("SELECT * FROM position_baselines WHERE account = $1", account)
    if row is None:
        return None
    raw = row["positions"]
    data: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return Baseline(account, nonzero((s, Decimal(str(q))) for s, q in data.items()),
                    Cut(row["cut_lo"], row["cut_hi"]), row["as_of"], bool(row["confirmed"]))


async def save_baseline(
    pool: asyncpg.Pool, account: str, positions: Mapping[str, Decimal], cut: Cut,
    as_of: datetime, *, confirmed: bool,
) -> Baseline:
    """Store the account's baseline (replacing the previous one) and return it. `fill_id`
    (the highest fill id stored then) is kept for people reading the table."""
    clean = nonzero(positions.items())
    await pool.execute(
        """
        INSERT INTO position_baselines (account, positions, fill_id, as_of, confirmed,
                                        cut_lo, cut_hi)
        VALUES ($1, $2::text::jsonb,
                (SELECT coalesce(max(id), 0) FROM order_events
                 WHERE account = $1 AND cum_qty IS NOT NULL), $3, $4, $5, $6)
        ON CONFLICT (account) DO UPDATE SET positions = excluded.positions,
            fill_id = excluded.fill_id, as_of = excluded.as_of, confirmed = excluded.confirmed,
            cut_lo = excluded.cut_lo, cut_hi = excluded.cut_hi
        """,
        account, json.dumps({s: str(q) for s, q in clean.items()}), as_of, confirmed,
        cut.lo, cut.hi,
    )
    return Baseline(account, clean, cut, as_of, confirmed)


# --- accepting the broker's positions ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptRecord:
    """One `ops positions accept` request; `applied_at` None while it waits."""

    id: str
    account: str
    requested_by: str
    requested_at: datetime
    applied_at: datetime | None
    applied_by: str | None
    before: dict[str, Decimal] | None
    after: dict[str, Decimal] | None
    detail: str | None


def _qtys(raw: Any) -> dict[str, Decimal] | None:
    if raw is None:
        return None
    data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return {str(s): Decimal(str(q)) for s, q in data.items()}


def _accept(r: asyncpg.Record) -> AcceptRecord:
    return AcceptRecord(str(r["id"]), r["account"], r["requested_by"], r["requested_at"],
                        r["applied_at"], r["applied_by"], _qtys(r["before"]),
                        _qtys(r["after"]), r["detail"])


async def request_accept(pool: asyncpg.Pool, account: str, requested_by: str,
                         at: datetime) -> str:
    """Ask `account`'s position manager to accept the broker's positions at its next sync;
    the request's id (its audit row, `accept_record`)."""
    accept_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO position_accepts (id, account, requested_by, requested_at)"
        " VALUES ($1::text::uuid, $2, $3, $4)", accept_id, account, requested_by, at)
    return accept_id


async def accept_record(pool: asyncpg.Pool, accept_id: str) -> AcceptRecord | None:
    r = await pool.fetchrow("SELECT * FROM position_accepts WHERE id = $1::text::uuid",
                            accept_id)
    return None if r is None else _accept(r)


async def pending_accepts(pool: asyncpg.Pool, account: str) -> list[AcceptRecord]:
    rows = await pool.fetch("SELECT * FROM position_accepts WHERE account = $1"
                            " AND applied_at IS NULL ORDER BY requested_at", account)
    return [_accept(r) for r in rows]


async def apply_accepts(
    pool: asyncpg.Pool, account: str, ids: Sequence[str], positions: Mapping[str, Decimal],
    cut: Cut, *, before: Mapping[str, Decimal], applied_by: str, at: datetime, detail: str,
) -> Baseline:
    """Take `positions` (the broker's, snapshot `cut`) as the account's confirmed baseline
    and record the pending requests `ids` as applied, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        baseline = await save_baseline(conn, account, positions, cut, at, confirmed=True)
        await conn.execute(
            "UPDATE position_accepts SET applied_at = $2, applied_by = $3,"
            " before = $4::text::jsonb, after = $5::text::jsonb, detail = $6"
            " WHERE id = ANY($1::text[]::uuid[]) AND applied_at IS NULL",
            list(ids), at, applied_by,
            json.dumps({s: str(q) for s, q in nonzero(before.items()).items()}),
            json.dumps({s: str(q) for s, q in nonzero(positions.items()).items()}), detail)
    return baseline


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


#: What Store.positions() returns (accounts with a sync row), open positions only.
_OPEN_POSITIONS_SQL = """
SELECT p.account, p.symbol, p.qty, p.avg_entry_price, p.current_price, p.market_value,
       p.unrealized_pl, p.unrealized_plpc, p.opened_at, s.synced_at
FROM positions p JOIN position_syncs s ON s.account = p.account
WHERE p.qty <> 0
ORDER BY p.account, p.symbol
"""


async def open_positions(pool: asyncpg.Pool) -> list[Mapping[str, Any]]:
    """Every synced account's open positions with the sync's time, by account and symbol:
    rows keyed by column (account, symbol, qty, avg_entry_price, current_price,
    market_value, unrealized_pl, unrealized_plpc, opened_at, synced_at), straight from
    the driver (no copy: thousands of them per dashboard load)."""
    return list(await pool.fetch(_OPEN_POSITIONS_SQL))
