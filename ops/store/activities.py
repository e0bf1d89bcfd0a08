"""Non-trade activity queries (migration 0018): what was applied, and applying one.

`apply` writes one planned activity (ops.core.activities.Applied) and all its effects in one
transaction, exactly once per (account, activity id): the `position_activities` row, the
ownership adjustment (ops.store.ownership, source `activity:<id>`; a late-paired OPTRD's
under its own id), the exit state re-based (or reset) by a split. A second apply of the
same id writes nothing and says so. The reads build the planner's `Book`.

Straight to Postgres, never through the outage buffer: these decide what the pipeline owns
and what its exits compare against, so they are read from (and written to) the truth; the
position manager skips activities while Postgres is away or the buffer holds rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.activities import Applied, Leg
from ops.store.ownership import Adjustment, record_adjustment


def _dec(v: Any) -> Decimal | None:
    return None if v is None else Decimal(v)


def _num(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reads:
    """From which date an account's activities are applied, and when they were last read."""

    since: date
    checked_at: datetime


async def load_reads(pool: asyncpg.Pool, account: str) -> Reads | None:
    r = await pool.fetchrow("SELECT since, checked_at FROM position_activity_reads"
                            " WHERE account = $1", account)
    return None if r is None else Reads(r["since"], r["checked_at"])


async def save_reads(pool: asyncpg.Pool, account: str, reads: Reads) -> None:
    """Record a read; `since` is kept from the first one."""
    await pool.execute(
        "INSERT INTO position_activity_reads (account, since, checked_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (account) DO UPDATE SET checked_at = excluded.checked_at",
        account, reads.since, reads.checked_at)


async def applied_ids(pool: asyncpg.Pool, account: str, ids: Iterable[str]) -> set[str]:
    rows = await pool.fetch("SELECT activity_id FROM position_activities WHERE account = $1"
                            " AND activity_id = ANY($2::text[])", account, sorted(set(ids)))
    return {r["activity_id"] for r in rows}


async def held(pool: asyncpg.Pool, account: str, symbols: Iterable[str]) -> dict[str, Decimal]:
    """The positions as last synced (the `positions` table), non-zero ones."""
    rows = await pool.fetch("SELECT symbol, qty FROM positions WHERE account = $1"
                            " AND symbol = ANY($2::text[]) AND qty <> 0",
                            account, sorted(set(symbols)))
    return {r["symbol"]: Decimal(r["qty"]) for r in rows}


async def legs(pool: asyncpg.Pool, account: str, days: Iterable[date]) -> list[Leg]:
    """Applied rows of those dates that can pair (ops.core.activities.Leg), oldest first."""
    rows = await pool.fetch(
        "SELECT activity_id, type, activity_date, symbol, qty_delta, managed_delta, price,"
        " paired_with FROM position_activities WHERE account = $1"
        " AND activity_date = ANY($2::date[]) AND symbol IS NOT NULL"
        " AND qty_delta IS NOT NULL AND qty_delta <> 0 ORDER BY id",
        account, sorted(set(days)))
    return [Leg(r["activity_id"], r["type"], r["activity_date"], r["symbol"],
                Decimal(r["qty_delta"]), Decimal(r["managed_delta"]), _dec(r["price"]),
                r["paired_with"]) for r in rows]


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """One applied activity as stored (tests, the dashboard's feed)."""

    activity_id: str
    type: str
    symbol: str | None
    qty_delta: Decimal | None
    managed_delta: Decimal
    at: datetime
    effect: str
    paired_with: str | None
    raw: dict[str, Any]


async def records(pool: asyncpg.Pool, account: str) -> list[ActivityRecord]:
    rows = await pool.fetch("SELECT * FROM position_activities WHERE account = $1 ORDER BY id",
                            account)
    return [ActivityRecord(r["activity_id"], r["type"], r["symbol"], _dec(r["qty_delta"]),
                           Decimal(r["managed_delta"]), r["at"], r["effect"], r["paired_with"],
                           json.loads(r["raw"]) if isinstance(r["raw"], str) else dict(r["raw"]))
            for r in rows]


# --- applying -------------------------------------------------------------------------------


async def apply(pool: asyncpg.Pool, account: str, a: Applied, *, at: datetime,
                by: str) -> bool:
    """Write `a` and its effects in one transaction; False (nothing written) when the
    activity was already applied."""
    act = a.activity
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchval(
            "INSERT INTO position_activities (account, activity_id, type, symbol, qty_delta,"
            " price, activity_date, at, managed_delta, paired_with, effect, raw, applied_at,"
            " applied_by) VALUES ($1, $2, $3, $4, $5::text::numeric, $6::text::numeric, $7,"
            " $8, $9::text::numeric, $10, $11, $12::text::jsonb, $8, $13)"
            " ON CONFLICT (account, activity_id) DO NOTHING RETURNING id",
            account, act.id, a.activity_type, a.symbol, _num(a.qty_delta), _num(act.price),
            act.date, at, str(a.managed_delta), a.paired_with, a.effect,
            json.dumps(dict(act.raw), default=str), by)
        if row is None:
            return False
        if a.managed_delta and a.symbol is not None:
            await record_adjustment(conn, Adjustment(
                account, a.symbol, a.managed_delta, a.kind, f"activity:{act.id}", a.effect,
                by, at))
        for late in a.late:
            await conn.execute(
                "UPDATE position_activities SET paired_with = $3, managed_delta ="
                " $4::text::numeric, effect = effect || $5 WHERE account = $1"
                " AND activity_id = $2 AND paired_with IS NULL",
                account, late.sink_id, late.paired_with, str(late.managed_delta),
                f"; paired later with {late.paired_with}")
            if late.managed_delta:
                await record_adjustment(conn, Adjustment(
                    account, late.symbol, late.managed_delta, "option-trade",
                    f"activity:{late.sink_id}",
                    f"paired later with {late.paired_with} ({a.effect})", by, at))
        if a.symbol is not None and a.exit_before is not None:
            before = a.exit_before
            if a.exit_reset or a.exit_state is None:
                await conn.execute(
                    "DELETE FROM position_exit_state WHERE account = $1 AND symbol = $2"
                    " AND opened_at = $3", account, a.symbol, before.opened_at)
            else:
                s = a.exit_state
                await conn.execute(
                    "UPDATE position_exit_state SET high_water = $4::text::numeric,"
                    " low_water = $5::text::numeric, updated_at = $6"
                    " WHERE account = $1 AND symbol = $2 AND opened_at = $3",
                    account, a.symbol, before.opened_at, str(s.high_water),
                    str(s.low_water), at)
    return True


async def apply_all(pool: asyncpg.Pool, account: str, planned: Sequence[Applied], *,
                    at: datetime, by: str) -> list[Applied]:
    """Apply in order; stop at the first already applied by someone else (the plan was
    made against an older book: the next read plans again). The ones written."""
    done: list[Applied] = []
    for a in planned:
        if not await apply(pool, account, a, at=at, by=by):
            break
        done.append(a)
    return done


__all__ = ["ActivityRecord", "Reads", "applied_ids", "apply", "apply_all", "held", "legs",
           "load_reads", "records", "save_reads"]
